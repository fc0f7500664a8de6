-- The MTA pod's policy, installed by the sluice Helm chart. Read it, do not
-- edit it in the pod: change the chart's values instead.
--
-- * sluice-settings.lua: spool, logs, listeners and where the SMTP AUTH and
--   admin API credentials are mounted, from the chart's values.
-- * sluice-generated.lua: queue config, egress pools and paths, and DKIM
--   signers, rendered by sluice-operator from QueuePolicy, EgressPool,
--   EgressPath and DkimSigner objects. It appears once the operator has
--   written its ConfigMap; the MTA reloads when it does and whenever it
--   changes.
-- * your own modules (mta.userPolicy): custom_lua constructors and event
--   handlers, required last.
local kumo = require 'kumo'
local settings = require 'sluice-settings'

-- A mounted Secret's value: read at each use, so a rotated Secret applies
-- without a restart; one trailing newline (from `--from-file`) dropped.
local function secret(path)
  local f = io.open(path, 'r')
  if not f then
    return nil
  end
  local value = f:read('a')
  f:close()
  return (value:gsub('\n$', ''))
end

kumo.on('init', function()
  if settings.dns then
    kumo.dns.configure_resolver(settings.dns)
  end
  if settings.redis then
    -- throttles and connection limits shared by every pod (redis.url)
    kumo.configure_redis_throttles(settings.redis)
  end
  for _, name in ipairs { 'data', 'meta' } do
    kumo.define_spool {
      name = name,
      path = settings.spool_dir,
      min_free_space = settings.spool_min_free_space,
      min_free_inodes = settings.spool_min_free_inodes,
    }
  end
  if settings.bounce_rules then
    -- bounce_classification in the log records (mta.bounceClassifier)
    kumo.configure_bounce_classifier { files = settings.bounce_rules }
  end
  if settings.shaping_rules then
    -- provider replies suspend paths for a while (mta.shaping)
    kumo.configure_shaping_automation { files = settings.shaping_rules }
  end
  if settings.log_dir then
    kumo.configure_local_logs {
      log_dir = settings.log_dir,
      max_file_size = settings.log_max_file_size,
      max_total_size = settings.log_max_total_size,
      retention = settings.log_retention,
      -- who authenticated (SMTP AUTH), in every record of the message
      meta = { 'authn_id', 'authz_id' },
    }
  end
  for _, listener in ipairs(settings.listeners) do
    kumo.start_esmtp_listener(listener)
  end
  kumo.start_http_listener(settings.http_listener)
  if settings.admin_auth_dir then
    -- xfer (scale-down handoff) to the other pods, which take transfers
    -- with the credentials they all share
    local user = secret(settings.admin_auth_dir .. '/username')
    if user then
      kumo.xfer.configure_client {
        username = user,
        password_file = settings.admin_auth_dir .. '/password',
      }
    end
  end
end)

-- SMTP AUTH (mta.smtpAuth.secretName): a user is a key of the Secret, its
-- value the password; a user acts only as itself.
if settings.smtp_auth_dir then
  kumo.on('smtp_server_auth_plain', function(authz, authc, password, conn_meta)
    if authz ~= authc or not authc:match('^[%w_%-][%w%._%-]*$') or password == '' then
      return false
    end
    return password == secret(settings.smtp_auth_dir .. '/' .. authc)
  end)
end

-- The admin API's HTTP Basic credentials (mta.admin.auth): the
-- kubernetes.io/basic-auth Secret the operator and Prometheus also use.
if settings.admin_auth_dir then
  kumo.on('http_server_validate_auth_basic', function(user, password)
    local want_user = secret(settings.admin_auth_dir .. '/username')
    local want_password = secret(settings.admin_auth_dir .. '/password')
    return want_user ~= nil and want_password ~= nil and want_password ~= ''
      and user == want_user and password == want_password
  end)
end

-- Present when the operator has rendered its ConfigMap (the volume source is
-- optional, so pods start before the operator's first write).
local generated
if package.searchpath('sluice-generated', package.path) then
  generated = require 'sluice-generated'
end

for _, module in ipairs(settings.modules) do
  require(module)
end

-- DkimSigner objects: sign every message last, after your modules' handlers
-- have changed it (unless they call dkim_sign themselves: mta.userPolicy.signsDkim).
if type(generated) == 'table' and generated.signs and not settings.user_signs_dkim then
  for _, event in ipairs { 'smtp_server_message_received', 'http_message_generated' } do
    local ok, err = pcall(kumo.on, event, function(msg)
      generated.dkim_sign(msg)
    end)
    if not ok then
      local where = tostring(err):match('defined at ([^\n]+)') or tostring(err):match('[^\n]*')
      error(string.format(
        'DkimSigner objects sign in %s, which your module handles too (at %s): end your handler with '
          .. "require('sluice-generated').dkim_sign(msg) and set mta.userPolicy.signsDkim=true",
        event,
        where
      ))
    end
  end
end
