#!/usr/bin/env python3
"""
A stand-in kube-apiserver for the operator's tests: PyPI kmock==0.8 (an HTTP
Kubernetes API emulator) plus a thin realism layer, class Apiserver below.

    python3 tests/apiserver/server.py --port 18080

Prints "READY http://127.0.0.1:PORT" once listening; SIGINT/SIGTERM stops it.
It starts with the usual namespaces and no custom resource definitions: the
tests apply crds/*.yaml with a real kubectl, which registers the kinds.

kmock provides the aiohttp server, request parsing into group/version/plural/
namespace/name/subresource, the in-memory object store, legacy discovery and
Status-shaped errors. The layer adds what kube-rs and kubectl rely on and
kmock 0.8 does not do:
  * metadata.resourceVersion (one global monotonic counter), uid,
    creationTimestamp, generation (bumped on spec changes only)
  * PUT (with resourceVersion preconditions -> 409), PATCH by content type:
    merge-patch, json-patch, strategic-merge (built-ins only, approximated as
    merge; 415 on custom resources), apply-patch+yaml (server-side apply
    approximated as an upsert + merge; fieldManager required)
  * /status subresource isolation both ways; status dropped on create
  * no write, no resourceVersion bump and no watch event for a no-op write
  * LIST with kind/apiVersion/resourceVersion, label and field selectors
  * WATCH from a resourceVersion (replayed from an event log, 410 when too
    old), sendInitialEvents, bookmarks, timeoutSeconds, selector transitions
  * Table output (Accept: as=Table) with the CRD's additionalPrinterColumns
  * CRD registration: a created CRD's kind becomes discoverable and served
  * finalizers/deletionTimestamp, delete preconditions, deletecollection,
    namespace existence on create, Secret stringData -> data
  * a minimal /openapi/v3 (fieldValidation per kind) so `kubectl apply` works
  * protobuf request bodies of a few built-in kinds (kubectl create, helm)
What it does not reproduce is listed in the README's testing section.
"""
import argparse
import asyncio
import base64
import collections
import copy
import hashlib
import datetime
import json
import re
import secrets
import signal
import sys
import uuid

import aiohttp.web
import jsonpatch
import kmock
import kmock._internal.parsing
import yaml
from kmock import KubernetesError, ResourceInfo, resource

VERBS = ['create', 'delete', 'deletecollection', 'get', 'list', 'patch', 'update', 'watch']
BUILTINS = {  # 'group/version/plural': (kind, namespaced, shortnames, subresources)
    'v1/namespaces': ('Namespace', False, ['ns'], ['status']),
    'v1/configmaps': ('ConfigMap', True, ['cm'], []),
    'v1/secrets': ('Secret', True, [], []),
    'v1/pods': ('Pod', True, ['po'], ['status']),
    'apps/v1/statefulsets': ('StatefulSet', True, ['sts'], ['status']),
    'v1/persistentvolumeclaims': ('PersistentVolumeClaim', True, ['pvc'], ['status']),
    'batch/v1/jobs': ('Job', True, [], ['status']),
    'v1/events': ('Event', True, ['ev'], []),
    'events.k8s.io/v1/events': ('Event', True, ['ev'], []),
    'apiextensions.k8s.io/v1/customresourcedefinitions': ('CustomResourceDefinition', False, ['crd', 'crds'], ['status']),
}
CRD_RES = resource('apiextensions.k8s.io', 'v1', 'customresourcedefinitions')
NO_GENERATION = {'configmaps', 'secrets', 'namespaces', 'events'}  # real apiserver leaves these without it


# --- small helpers ---------------------------------------------------------------------------

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')


def age(ts) -> str:
    try:
        t = datetime.datetime.strptime(ts, '%Y-%m-%dT%H:%M:%SZ').replace(tzinfo=datetime.timezone.utc)
    except (TypeError, ValueError):
        return '<unknown>'
    s = int((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds())
    for unit, n in (('d', 86400), ('h', 3600), ('m', 60)):
        if s >= 2 * n:
            return f'{s // n}{unit}'
    return f'{s}s'


def err(code, reason, message, **details):
    return KubernetesError(status=code, reason=reason, message=message, details=details or {'causes': []})


def merge_patch(target, patch):  # RFC 7386
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def jsonpath(obj, path):  # enough for printer columns: .a.b, [0], [?(@.k=="v")]
    cur = [obj]
    for key, fk, fv, idx in re.findall(r'\.([^.\[]+)|\[\?\(@\.(\w+)\s*==\s*["\']([^"\']*)["\']\)\]|\[(\d+)\]', path):
        nxt = []
        for c in cur:
            if key and isinstance(c, dict) and key in c:
                nxt.append(c[key])
            elif fk and isinstance(c, list):
                nxt += [e for e in c if isinstance(e, dict) and str(e.get(fk)) == fv]
            elif idx and isinstance(c, list) and int(idx) < len(c):
                nxt.append(c[int(idx)])
        cur = nxt
    return cur[0] if cur else None


def parse_label_selector(s):
    reqs = []
    for term in re.findall(r'(?:[^,(]|\([^)]*\))+', s or ''):
        term = term.strip()
        if m := re.fullmatch(r'([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)', term):
            reqs.append((m[1], m[2], {v.strip() for v in m[3].split(',')}))
        elif m := re.fullmatch(r'([\w./-]+)\s*(==|=|!=)\s*([\w./-]*)', term):
            reqs.append((m[1], '!=' if m[2] == '!=' else '=', m[3]))
        elif m := re.fullmatch(r'(!?)([\w./-]+)', term):
            reqs.append((m[2], '!' if m[1] else 'exists', None))
    return reqs


def labels_match(reqs, labels):
    for key, op, val in reqs:
        v = labels.get(key)
        if op in ('=', 'in') and v not in ({val} if op == '=' else val) or op == 'exists' and key not in labels \
                or op in ('!=', 'notin') and v in ({val} if op == '!=' else val) or op == '!' and key in labels:
            return False
    return True


def fields_match(sel, obj):
    for term in filter(None, (sel or '').split(',')):
        key, op, val = re.fullmatch(r'([\w.]+)\s*(==|=|!=)\s*(.*)', term.strip()).groups()
        actual = str(jsonpath(obj, '.' + key) or '')
        if (actual == val) != (op != '!='):
            return False
    return True


def parse_path(path):
    """Replacement for kmock._internal.parsing.parse_path: handles /api/v1/namespaces[/NAME[/status]]."""
    parts = path.strip('/').split('/')
    group = version = namespace = plural = name = None
    rest = []
    if parts[0] == 'apis' and len(parts) >= 2:
        group, version, rest = parts[1], (parts[2] if len(parts) >= 3 else None), parts[3:]
    elif parts[0] == 'api' and len(parts) >= 2:
        group, version, rest = '', parts[1], parts[2:]
    if group == '' and rest[:1] == ['namespaces'] and (len(rest) == 2 or len(rest) == 3 and rest[2] in ('status', 'finalize')):
        rest = ['namespaces'] + rest[1:]  # a Namespace object itself
    elif rest[:1] == ['namespaces'] and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    plural, name = (rest + [None, None])[:2]
    return kmock._internal.parsing.ParsedPath(group, version, plural, namespace, name, '/'.join(rest[2:]) or None)


# --- protobuf bodies: typed client-go clients (kubectl create cm/secret/ns, helm's release Secrets)
# send "application/vnd.kubernetes.protobuf". Decode just the few kinds they write; JSON elsewhere.

def pb_fields(buf):
    def varint(i):
        v = shift = 0
        while True:
            b = buf[i]; i += 1; v |= (b & 0x7f) << shift; shift += 7
            if b < 0x80:
                return v, i
    i = 0
    while i < len(buf):
        key, i = varint(i)
        wt = key & 7
        if wt == 0:
            v, i = varint(i)
        elif wt == 2:
            n, i = varint(i); v = buf[i:i + n]; i += n
        else:
            n = 8 if wt == 1 else 4; v = buf[i:i + n]; i += n
        yield key >> 3, v


def pb_map(entries, as_b64=False):
    out = {}
    for e in entries:
        kv = dict(pb_fields(e))
        v = kv.get(2, b'')
        out[kv.get(1, b'').decode()] = base64.b64encode(v).decode() if as_b64 else v.decode()
    return out


def pb_decode(body):
    """k8s protobuf envelope -> JSON dict for ObjectMeta + Secret/ConfigMap/Namespace; else ValueError."""
    if not body.startswith(b'k8s\x00'):
        raise ValueError('not a k8s protobuf envelope')
    env = dict(pb_fields(body[4:]))
    tm = dict(pb_fields(env.get(1, b'')))
    kind = tm.get(2, b'').decode()
    fields = collections.defaultdict(list)
    for f, v in pb_fields(env.get(2, b'')):
        fields[f].append(v)
    m = collections.defaultdict(list)
    for f, v in pb_fields((fields.get(1) or [b''])[0]):
        m[f].append(v)
    s = lambda f: m[f][0].decode() if m.get(f) and m[f][0] else None
    meta = {'name': s(1), 'generateName': s(2), 'namespace': s(3), 'resourceVersion': s(6),
            'labels': pb_map(m[11]) or None, 'annotations': pb_map(m[12]) or None,
            'finalizers': [x.decode() for x in m[14]] or None}
    obj = {'apiVersion': tm.get(1, b'').decode() or 'v1', 'kind': kind,
           'metadata': {k: v for k, v in meta.items() if v}}
    if kind == 'DeleteOptions':
        pre = dict(pb_fields((fields.get(2) or [b''])[0]))
        return {'kind': kind, 'apiVersion': obj['apiVersion'], 'preconditions': {
            k: pre[f].decode() for f, k in ((1, 'uid'), (2, 'resourceVersion')) if pre.get(f)}}
    if kind == 'Secret':
        obj.update(data=pb_map(fields[2], as_b64=True), stringData=pb_map(fields[4]) or None,
                   type=fields[3][0].decode() or None if fields.get(3) else None, immutable=bool(fields[5][0]) if fields.get(5) else None)
    elif kind == 'ConfigMap':
        obj.update(data=pb_map(fields[2]), binaryData=pb_map(fields[3], as_b64=True) or None,
                   immutable=bool(fields[4][0]) if fields.get(4) else None)
    elif kind == 'Namespace':
        pass  # spec.finalizers/status are server-defaulted anyway
    else:
        raise ValueError(f'protobuf body for kind {kind!r} is not supported by this stand-in')
    return {k: v for k, v in obj.items() if v is not None}


def strip_meta_status(obj):
    return {k: v for k, v in obj.items() if k not in ('metadata', 'status', 'apiVersion', 'kind')}


# --- the realism layer -----------------------------------------------------------------------

class Apiserver(kmock.KubernetesEmulator):
    LOG_SIZE = 10000
    BOOKMARK_INTERVAL = 5.0

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()  # kmock's own discovery + fallback object handlers
        self.rv = 0
        self.log = collections.deque(maxlen=self.LOG_SIZE)  # (rv, resource, type, obj, old)
        self.changed = asyncio.Condition()
        self.columns: dict = {}  # resource -> additionalPrinterColumns; presence == it is a CR
        # Our handlers sit between user reactions (priority 0) and kmock's fallbacks (-inf).
        layer = self ** -1000
        layer[lambda r: r.resource is not None and r.resource.plural is not None] << self._dispatch
        kmock._internal.parsing.parse_path = parse_path  # kmock's crashes on /api/v1/namespaces
        self.verbose = False
        # kubectl --validate=strict asks OpenAPI v3 whether PATCH supports ?fieldValidation for the kind;
        # say "yes" so it uses server-side validation (ignored here) instead of downloading the full
        # /openapi/v2 schema (which it wants as protobuf). No schemas are served.
        # kubectl caches each group's document by this hash: it names what is served, not only
        # the resourceVersion, so a cache left by another build of this server is never reused
        layer['get /openapi/v3'] << (lambda: {'paths': {
            gv: {'serverRelativeURL': f'/openapi/v3/{gv}?hash={self.rv}-{self.openapi_digest()}'}
            for gv in self.openapi_gvs()}})
        layer['get', re.compile(r'/openapi/v3/.+')] << (lambda request: self.openapi_gv(request.url.path[12:]))
        for key, (kind, namespaced, short, subs) in BUILTINS.items():
            self.resources[key] = ResourceInfo(kind=kind, singular=kind.lower(), namespaced=namespaced,
                                               verbs=VERBS, shortnames=short, subresources=subs)

    async def __call__(self, raw_request):
        # kmock's Request._parse() crashes (UnicodeDecodeError -> 500) on binary bodies: convert first.
        if 'protobuf' in raw_request.headers.get('Content-Type', ''):
            clone = raw_request.clone(headers={**raw_request.headers, 'Content-Type': 'application/json'})
            try:
                body = json.dumps(pb_decode(await raw_request.read())).encode()
            except (ValueError, IndexError, KeyError) as e:  # -> 415 in _dispatch
                body = json.dumps({'unsupported': str(e)}).encode()
                clone = clone.clone(headers=raw_request.headers)
            raw_request, raw_request._read_bytes = clone, body  # aiohttp private: the cached body
        return await super().__call__(raw_request)

    def openapi_digest(self):
        served = ','.join(sorted(f'{r.group}/{r.version}/{r.plural}' for r in self.resources))
        return hashlib.sha256(served.encode()).hexdigest()[:12]

    def openapi_gvs(self):
        return {f'apis/{r.group}/{r.version}' if r.group else f'api/{r.version}' for r in self.resources}

    def openapi_gv(self, gv):
        return {'openapi': '3.0.0', 'info': {'title': 'kmock', 'version': 'v0'}, 'paths': {
            f'/{gv}/{r.plural}/{{name}}': {'patch': {
                'x-kubernetes-group-version-kind': {'group': r.group, 'version': r.version, 'kind': self.resources[r].kind},
                'parameters': [{'name': 'fieldValidation', 'in': 'query', 'schema': {'type': 'string'}}]}}
            for r in list(self.resources) if gv == (f'apis/{r.group}/{r.version}' if r.group else f'api/{r.version}')}}

    # kmock's KubernetesEmulator._handle mutates objects before any reaction runs (naively).
    # Skip that: all writes go through _dispatch below.
    async def _handle(self, request):
        if self.verbose:
            print(f'{request.method.value} {request.url.path_qs} [{request.headers.get("Content-Type", "")}] '
                  f'accept=[{request.headers.get("Accept", "")}]',
                  file=sys.stderr, flush=True)
        return await kmock.RawHandler._handle(self, request)

    # Discovery fixes: kmock says groupVersion "/v1" for core; subresources copy parent verbs+shortnames.
    async def _serve_version(self, request):
        doc = await super()._serve_version(request)
        doc['groupVersion'] = doc['groupVersion'].lstrip('/')
        for r in doc['resources']:
            if '/' in r['name']:
                r.update(verbs=['get', 'patch', 'update'], shortNames=[], categories=[], singularName='')
        return doc

    async def _serve_server_version(self, request):
        return {'major': '1', 'minor': '35', 'gitVersion': 'v1.35.0-kmock', 'platform': 'linux/amd64'}

    # -- storage primitives (kmock.objects keeps the full history for assertions) --
    def current(self, res, ns, name):
        o = self._objects._objects.get((res, ns, name))
        return None if o is None or o.deleted else copy.deepcopy(o.raw)

    def items(self, res, ns=None):
        for (r, n, name), o in sorted(self._objects.items(), key=lambda kv: (kv[0][1] or '', kv[0][2])):
            if r == res and (ns is None or n == ns) and not o.deleted:
                yield copy.deepcopy(o.raw)

    async def commit(self, res, ns, name, old, new):
        """Store `new` (None = delete), bump rv, log the watch event."""
        key = (res, ns, name)
        self.rv += 1
        obj = new if new is not None else copy.deepcopy(old)
        obj['metadata']['resourceVersion'] = str(self.rv)
        if new is None:
            self._objects[key].delete()
            etype = 'DELETED'
        elif old is None:
            if key in self._objects:
                self._objects[key].create(new)
            else:
                self._objects[key] = new
            etype = 'ADDED'
        else:
            self._objects[key].history.append(new)
            etype = 'MODIFIED'
        self.log.append((self.rv, res, etype, copy.deepcopy(obj), old))
        if res == CRD_RES:
            self.sync_crd(old, new)
        async with self.changed:
            self.changed.notify_all()
        return obj

    def sync_crd(self, old, new):
        """A CRD write (un)registers its resources for discovery & serving."""
        for crd in (old, new):
            if crd is None:
                continue
            spec = crd['spec']
            for v in spec.get('versions', []):
                res = resource(spec['group'], v['name'], spec['names']['plural'])
                self.resources.pop(res, None)
                self.columns.pop(res, None)
                if crd is old and new is None:  # CRD deleted: drop its objects too
                    for key in [k for k in self._objects if k[0] == res]:
                        del self._objects[key]
                if crd is new and v.get('served', True):
                    names = spec['names']
                    self.resources[res] = ResourceInfo(
                        kind=names['kind'], singular=names.get('singular', names['kind'].lower()),
                        namespaced=spec.get('scope') == 'Namespaced', verbs=VERBS,
                        shortnames=names.get('shortNames', []), categories=names.get('categories', []),
                        subresources=[s for s in ('status', 'scale') if s in v.get('subresources', {})])
                    self.columns[res] = v.get('additionalPrinterColumns', [])

    def meta(self, res):
        info = self.resources[res]
        gv = f'{res.group}/{res.version}' if res.group else res.version
        return info, gv, f'{res.plural}.{res.group}' if res.group else res.plural

    # -- request dispatch --
    async def _dispatch(self, request):
        res, name, sub = request.resource, request.name, request.subresource
        if res not in self.resources:
            raise err(404, 'NotFound', 'the server could not find the requested resource')
        info = self.resources[res]
        ns = request.namespace if info.namespaced else None
        method = request.method.value
        if info.namespaced and ns is None and not (method == 'GET' and name is None):
            raise err(404, 'NotFound', 'the server could not find the requested resource (no namespace in URL)')
        if sub and (sub not in info.subresources or sub != 'status'):
            raise err(404, 'NotFound', f'the server could not find the requested resource ({sub})')
        if method == 'GET' and request.params.get('watch') in ('true', '1'):
            return kmock.Response(status=200, headers={'Content-Type': 'application/json'},
                                  payload=self.watch(request, res, ns))
        if method == 'GET':
            body = self.list(request, res, ns) if name is None else self.get(res, ns, name)
            return self.reply(request, res, 200, body)
        if method == 'DELETE' and name is None:
            return self.reply(request, res, 200, await self.delete_collection(request, res, ns))
        if name is None and method != 'POST' or name is not None and method == 'POST':
            raise err(405, 'MethodNotAllowed', f'the server does not allow this method on the requested resource')
        body = copy.deepcopy(request.data)  # kmock keeps request.data in its request log: don't mutate
        if 'protobuf' in request.headers.get('Content-Type', '') or 'cbor' in request.headers.get('Content-Type', ''):
            raise err(415, 'UnsupportedMediaType', f'kmock stand-in: unsupported {request.headers["Content-Type"]} body: {request.text}')
        if method == 'PATCH' and 'apply-patch' in request.headers.get('Content-Type', ''):
            body = yaml.safe_load(request.text)  # SSA bodies may be YAML (kmock only parses JSON)
        if method != 'DELETE' and not isinstance(body, (dict, list)):
            raise err(400, 'BadRequest', 'the request body is not a valid JSON/YAML object')
        handler = {'POST': self.create, 'PUT': self.replace, 'PATCH': self.patch, 'DELETE': self.delete}[method]
        code, obj = await handler(request, res, ns, name, sub, body)
        return self.reply(request, res, code, obj)

    def reply(self, request, res, code, obj):
        if 'as=Table' in request.headers.get('Accept', '') and obj.get('kind') != 'Status':
            obj = self.table(request, res, obj.get('items', [obj]) if obj.get('kind', '').endswith('List') else [obj])
        return kmock.Response(status=code, headers={'Content-Type': 'application/json'}, payload=obj)

    def not_found(self, res, name):
        info, gv, qual = self.meta(res)
        return err(404, 'NotFound', f'{qual} "{name}" not found', name=name, group=res.group, kind=res.plural)

    def get(self, res, ns, name):
        obj = self.current(res, ns, name)
        if obj is None:
            raise self.not_found(res, name)
        return obj

    def selected(self, request, obj):
        return (labels_match(parse_label_selector(request.params.get('labelSelector')),
                             obj.get('metadata', {}).get('labels') or {})
                and fields_match(request.params.get('fieldSelector'), obj))

    def list(self, request, res, ns):
        info, gv, _ = self.meta(res)
        items = [o for o in self.items(res, ns) if self.selected(request, o)]
        if res not in self.columns:  # real apiserver omits kind/apiVersion on items of builtin lists
            items = [{k: v for k, v in o.items() if k not in ('apiVersion', 'kind')} for o in items]
        return {'apiVersion': gv, 'kind': f'{info.kind}List',
                'metadata': {'resourceVersion': str(self.rv)}, 'items': items}

    def table(self, request, res, objs):
        cols = self.columns.get(res) or [{'name': 'Age', 'type': 'date', 'jsonPath': '.metadata.creationTimestamp'}]
        defs = [{'name': 'Name', 'type': 'string', 'format': 'name', 'description': 'Name', 'priority': 0}]
        defs += [{'name': c['name'], 'type': c.get('type', 'string'), 'format': c.get('format', ''),
                  'description': c.get('description', ''), 'priority': c.get('priority', 0)} for c in cols]
        rows = []
        for o in objs:
            cells = [o['metadata']['name']]
            for c in cols:
                v = jsonpath(o, c['jsonPath'])
                cells.append(age(v) if c.get('type') == 'date' and v else v)
            partial = {'kind': 'PartialObjectMetadata', 'apiVersion': 'meta.k8s.io/v1', 'metadata': o['metadata']}
            rows.append({'cells': cells, 'object': o if request.params.get('includeObject') == 'Object' else partial})
        return {'kind': 'Table', 'apiVersion': 'meta.k8s.io/v1',
                'metadata': {'resourceVersion': str(self.rv)}, 'columnDefinitions': defs, 'rows': rows}

    # -- writes --
    def check_gvk(self, res, body):
        info, gv, _ = self.meta(res)
        if body.get('apiVersion', gv) != gv or body.get('kind', info.kind) != info.kind:
            raise err(400, 'BadRequest', f'the API version/kind in the data ({body.get("apiVersion")}/'
                                         f'{body.get("kind")}) does not match the expected ({gv}/{info.kind})')

    def dry(self, request):
        return request.params.get('dryRun') == 'All'

    async def create(self, request, res, ns, name, sub, body, code=201):
        info, gv, qual = self.meta(res)
        self.check_gvk(res, body)
        meta = body.setdefault('metadata', {})
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + secrets.token_hex(3)[:5]
        if not meta.get('name'):
            raise err(422, 'Invalid', f'{info.kind} "" is invalid: metadata.name: Required value: name or generateName is required')
        if meta.get('resourceVersion'):
            raise err(400, 'BadRequest', 'resourceVersion should not be set on objects to be created')
        if ns is not None and meta.get('namespace', ns) != ns:
            raise err(400, 'BadRequest', 'the namespace of the provided object does not match the namespace sent on the request')
        if ns is not None and self.current(resource('v1/namespaces'), None, ns) is None:
            raise err(404, 'NotFound', f'namespaces "{ns}" not found', name=ns, kind='namespaces')
        if self.current(res, ns, meta['name']) is not None:
            raise err(409, 'AlreadyExists', f'{qual} "{meta["name"]}" already exists',
                      name=meta['name'], group=res.group, kind=res.plural)
        body.update(apiVersion=gv, kind=info.kind)
        for k in ('deletionTimestamp', 'deletionGracePeriodSeconds', 'managedFields'):
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now())
        if res.plural not in NO_GENERATION:
            meta['generation'] = 1
        if ns is not None:
            meta['namespace'] = ns
        if 'status' in info.subresources and res in self.columns:
            body.pop('status', None)  # CRs with a status subresource ignore status on create
        self.normalize(res, None, body)
        if self.dry(request):
            return code, body
        return code, await self.commit(res, ns, meta['name'], None, body)

    def normalize(self, res, old, new):
        """Per-kind server-side defaults/conversions (a tiny stand-in for strategies)."""
        if res == resource('v1/secrets'):
            for k, v in (new.pop('stringData', None) or {}).items():
                new.setdefault('data', {})[k] = base64.b64encode(v.encode()).decode()
            new.setdefault('type', 'Opaque')
        if res == resource('v1/namespaces'):
            new.setdefault('status', {}).setdefault('phase', 'Active')
            new.setdefault('spec', {}).setdefault('finalizers', ['kubernetes'])
        if res == CRD_RES:
            names = new['spec']['names']
            new['status'] = {
                'acceptedNames': names, 'storedVersions': [v['name'] for v in new['spec']['versions'] if v.get('storage')],
                'conditions': [{'type': t, 'status': 'True', 'reason': t, 'message': '', 'lastTransitionTime': now()}
                               for t in ('NamesAccepted', 'Established')]}

    async def update(self, request, res, ns, name, sub, old, new, require_rv=False):
        """Common tail of PUT/PATCH: preconditions, subresource isolation, metadata, no-op detection."""
        info, gv, qual = self.meta(res)
        rv = (new.get('metadata') or {}).get('resourceVersion')
        if require_rv and not rv and res in self.columns:
            raise err(422, 'Invalid', f'{info.kind}.{res.group} "{name}" is invalid: metadata.resourceVersion: '
                                      f'Invalid value: 0x0: must be specified for an update')
        if rv and rv != old['metadata']['resourceVersion']:
            raise err(409, 'Conflict', f'Operation cannot be fulfilled on {qual} "{name}": the object has been '
                                       f'modified; please apply your changes to the latest version and try again',
                      name=name, group=res.group, kind=res.plural)
        if sub == 'status':  # /status writes touch only .status
            new = {**old, 'status': new.get('status')} if new.get('status') is not None else \
                {k: v for k, v in old.items() if k != 'status'}
        elif 'status' in info.subresources:  # main-resource writes never touch .status
            new = {k: v for k, v in new.items() if k != 'status'}
            if 'status' in old:
                new['status'] = old['status']
        new['metadata'] = dict(new.get('metadata') or {})
        for k in ('name', 'namespace', 'uid', 'creationTimestamp', 'deletionTimestamp',
                  'deletionGracePeriodSeconds', 'generation', 'resourceVersion'):
            new['metadata'].pop(k, None)
            if k in old['metadata']:
                new['metadata'][k] = old['metadata'][k]
        if old['metadata'].get('deletionTimestamp'):  # no new finalizers on a terminating object
            extra = set(new['metadata'].get('finalizers') or []) - set(old['metadata'].get('finalizers') or [])
            if extra:
                raise err(422, 'Invalid', f'metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(extra)}')
        new.update(apiVersion=gv, kind=info.kind)
        if not (res == CRD_RES and sub == 'status'):
            self.normalize(res, old, new)
        if strip_meta_status(new) != strip_meta_status(old) and res.plural not in NO_GENERATION:
            new['metadata']['generation'] = old['metadata'].get('generation', 1) + 1
        if new == old or self.dry(request):  # no-op: no rv bump, no event
            return 200, old if new == old else new
        if new['metadata'].get('deletionTimestamp') and not new['metadata'].get('finalizers'):
            gone = await self.commit(res, ns, name, old, None)  # like etcd: DELETED only, last stored state
            new['metadata']['resourceVersion'] = gone['metadata']['resourceVersion']
            return 200, new
        return 200, await self.commit(res, ns, name, old, new)

    async def replace(self, request, res, ns, name, sub, body):
        self.check_gvk(res, body)
        if (body.get('metadata') or {}).get('name', name) != name:
            raise err(400, 'BadRequest', f'the name of the object ({body["metadata"]["name"]}) does not match the name on the URL ({name})')
        old = self.get(res, ns, name)
        return await self.update(request, res, ns, name, sub, old, body, require_rv=True)

    async def patch(self, request, res, ns, name, sub, body):
        ctype = request.headers.get('Content-Type', '').split(';')[0].strip()
        old = self.current(res, ns, name)
        if ctype == 'application/apply-patch+yaml':
            if not request.params.get('fieldManager'):
                raise err(422, 'Invalid', 'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch')
            self.check_gvk(res, body)
            if old is None and sub is None:  # SSA upsert; 201 like the real server
                body.setdefault('metadata', {})['name'] = name
                return await self.create(request, res, ns, name, sub, body)
            if old is None:
                raise self.not_found(res, name)
            new = merge_patch(old, body)  # approximation: no field ownership, no removal of dropped fields
        elif old is None:
            raise self.not_found(res, name)
        elif ctype == 'application/json-patch+json':
            try:
                new = jsonpatch.apply_patch(old, body)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise err(422, 'Invalid', f'the server rejected our request due to an error in our request: {e}')
        elif ctype == 'application/merge-patch+json' or (
                ctype == 'application/strategic-merge-patch+json' and res not in self.columns):
            new = merge_patch(old, body)  # SMP on builtins approximated: no list merge keys/$patch
        else:
            raise err(415, 'UnsupportedMediaType', f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml')
        return await self.update(request, res, ns, name, sub, old, new)

    async def delete(self, request, res, ns, name, sub, body):
        old = self.get(res, ns, name)
        pre = (body or {}).get('preconditions') or {}
        for k in ('uid', 'resourceVersion'):
            if pre.get(k) and pre[k] != old['metadata'].get(k):
                raise err(409, 'Conflict', f'Precondition failed: {k} in precondition: {pre[k]}, {k} in object meta: {old["metadata"].get(k)}')
        if self.dry(request):
            return 200, old
        if not old['metadata'].get('finalizers'):
            return 200, await self.commit(res, ns, name, old, None)
        if old['metadata'].get('deletionTimestamp'):
            return 200, old
        new = copy.deepcopy(old)
        new['metadata'].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0)
        if 'generation' in old['metadata']:
            new['metadata']['generation'] = old['metadata']['generation'] + 1
        return 202, await self.commit(res, ns, name, old, new)

    async def delete_collection(self, request, res, ns):
        for obj in [o for o in self.items(res, ns) if self.selected(request, o)]:
            m = obj['metadata']
            await self.delete(request, res, m.get('namespace'), m['name'], None, request.data)
        return {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Success'}

    # -- watch --
    async def watch(self, request, res, ns):
        info, gv, _ = self.meta(res)
        p = request.params
        rv = p.get('resourceVersion') or '0'
        timeout = float(p['timeoutSeconds']) if p.get('timeoutSeconds') else None
        deadline = asyncio.get_running_loop().time() + timeout if timeout else None
        table = 'as=Table' in request.headers.get('Accept', '')
        name = request.name  # watch on a named path (deprecated form)

        def ok(o):
            return o is not None and (name is None or o['metadata']['name'] == name) and \
                (ns is None or o['metadata'].get('namespace') == ns) and self.selected(request, o)

        def event(etype, obj):
            return {'type': etype, 'object': self.table(request, res, [obj]) if table else obj}

        def bookmark(initial_end=False):
            ann = {'k8s.io/initial-events-end': 'true'} if initial_end else {}
            return {'type': 'BOOKMARK', 'object': {'kind': info.kind, 'apiVersion': gv,
                                                   'metadata': {'resourceVersion': str(self.rv), 'annotations': ann}}}

        yield b''  # send headers now (kmock delays them until the first chunk)
        if rv == '0' or p.get('sendInitialEvents') == 'true':  # "any"/unset: synthetic ADDED first
            last = self.rv
            for o in self.items(res, ns):
                if ok(o):
                    yield event('ADDED', o)
            if p.get('sendInitialEvents') == 'true':
                yield bookmark(initial_end=True)
        else:
            last = int(rv)
            floor = self.log[0][0] - 1 if len(self.log) == self.log.maxlen else 0
            if last < floor:
                yield {'type': 'ERROR', 'object': {'kind': 'Status', 'apiVersion': 'v1', 'metadata': {},
                       'status': 'Failure', 'reason': 'Expired', 'code': 410,
                       'message': f'too old resource version: {last} ({floor})'}}
                return
        while True:
            for erv, eres, etype, obj, old in list(self.log):
                if erv <= last or eres != res:
                    continue
                was, now_ = ok(old), ok(obj) and etype != 'DELETED'
                if etype == 'DELETED' and was:
                    yield event('DELETED', obj)
                elif now_ and not was:
                    yield event('ADDED', obj)
                elif now_ and was:
                    yield event(etype, obj)
                elif was and not now_:
                    yield event('DELETED', obj)  # left the selector
            last = self.rv
            wait = self.BOOKMARK_INTERVAL
            if deadline is not None:
                wait = min(wait, deadline - asyncio.get_running_loop().time())
                if wait <= 0:
                    return
            try:
                async with self.changed:
                    await asyncio.wait_for(self.changed.wait(), wait)
            except asyncio.TimeoutError:
                transport = request._raw_request.transport if request._raw_request is not None else None
                if transport is None or transport.is_closing():
                    return  # client went away (aiohttp does not cancel the handler)
                if p.get('allowWatchBookmarks') == 'true':
                    yield bookmark()

    async def seed(self, crds=()):
        for ns in ('default', 'kube-system', 'kube-public', 'kube-node-lease'):
            await self.create(kmock.Request(), resource('v1/namespaces'), None, ns, None,
                              {'metadata': {'name': ns}})
        for crd in crds:
            await self.create(kmock.Request(), CRD_RES, None, None, None, copy.deepcopy(crd))


async def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument('--host', default='127.0.0.1')
    ap.add_argument('--port', type=int, default=0)
    ap.add_argument('-v', '--verbose', action='store_true', help='log every request to stderr')
    ap.add_argument('--log-size', type=int, default=Apiserver.LOG_SIZE, help='watch event log; older rv -> 410')
    ap.add_argument('--bookmark-interval', type=float, default=Apiserver.BOOKMARK_INTERVAL)
    args = ap.parse_args(argv)
    Apiserver.LOG_SIZE, Apiserver.BOOKMARK_INTERVAL = args.log_size, args.bookmark_interval

    handler = Apiserver()
    handler.verbose = args.verbose
    async with handler, kmock.Server(handler, host=args.host, port=args.port or None) as server:
        await handler.seed()
        print(f'READY http://{server.host}:{server.port}', flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()


if __name__ == '__main__':
    asyncio.run(main())
