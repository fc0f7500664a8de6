//! `kumo.http.build_client{...}` (spec §9.3): an HTTP client for webhooks
//! from Lua, over reqwest (rustls/ring). The API follows KumoMTA's:
//! `client:post(url):header(k, v):body(s):send()` returns a response with
//! `status_code()`, `status_reason()`, `status_is_success()`, `text()`...

use super::kumo::from_table;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};
use serde::Deserialize;
use sluice_common::duration;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientOptions {
    user_agent: Option<String>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration::deserialize_opt")]
    pool_idle_timeout: Option<Duration>,
}

struct HttpClient(reqwest::Client);

/// A request being built; `send()` consumes it.
struct HttpRequest(parking_lot::Mutex<Option<reqwest::RequestBuilder>>);

struct HttpResponse {
    status: reqwest::StatusCode,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn runtime_error(text: String) -> mlua::Error {
    mlua::Error::RuntimeError(text)
}

impl HttpRequest {
    fn new(builder: reqwest::RequestBuilder) -> Self {
        HttpRequest(parking_lot::Mutex::new(Some(builder)))
    }

    /// Apply `f` to the builder, for the chaining methods.
    fn update(
        &self,
        f: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> mlua::Result<()> {
        let mut slot = self.0.lock();
        let builder = slot
            .take()
            .ok_or_else(|| runtime_error("this request has already been sent".into()))?;
        *slot = Some(f(builder));
        Ok(())
    }
}

impl UserData for HttpClient {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        for (name, method) in [
            ("get", reqwest::Method::GET),
            ("post", reqwest::Method::POST),
            ("put", reqwest::Method::PUT),
            ("delete", reqwest::Method::DELETE),
            ("patch", reqwest::Method::PATCH),
            ("head", reqwest::Method::HEAD),
        ] {
            methods.add_method(name, move |_, this, url: String| {
                let url = reqwest::Url::parse(&url)
                    .map_err(|e| runtime_error(format!("invalid URL {url:?}: {e}")))?;
                Ok(HttpRequest::new(this.0.request(method.clone(), url)))
            });
        }
        // connections close when the client is collected; nothing to flush
        methods.add_method("close", |_, _, ()| Ok(()));
    }
}

impl UserData for HttpRequest {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // each builder method returns the request, for chaining
        methods.add_function(
            "header",
            |_, (ud, k, v): (mlua::AnyUserData, String, String)| {
                ud.borrow::<HttpRequest>()?.update(|b| b.header(k, v))?;
                Ok(ud)
            },
        );
        methods.add_function("headers", |_, (ud, t): (mlua::AnyUserData, Table)| {
            let mut pairs = vec![];
            for pair in t.pairs::<String, String>() {
                pairs.push(pair?);
            }
            ud.borrow::<HttpRequest>()?.update(|mut b| {
                for (k, v) in pairs {
                    b = b.header(k, v);
                }
                b
            })?;
            Ok(ud)
        });
        methods.add_function(
            "body",
            |_, (ud, body): (mlua::AnyUserData, mlua::String)| {
                let body = body.as_bytes().to_vec();
                ud.borrow::<HttpRequest>()?.update(|b| b.body(body))?;
                Ok(ud)
            },
        );
        methods.add_function(
            "basic_auth",
            |_, (ud, user, pass): (mlua::AnyUserData, String, Option<String>)| {
                ud.borrow::<HttpRequest>()?
                    .update(|b| b.basic_auth(user, pass))?;
                Ok(ud)
            },
        );
        methods.add_function(
            "bearer_auth",
            |_, (ud, token): (mlua::AnyUserData, String)| {
                ud.borrow::<HttpRequest>()?
                    .update(|b| b.bearer_auth(token))?;
                Ok(ud)
            },
        );
        methods.add_function("timeout", |_, (ud, d): (mlua::AnyUserData, Value)| {
            let d = match &d {
                Value::Integer(n) => duration::duration_from_secs_f64(*n as f64),
                Value::Number(n) => duration::duration_from_secs_f64(*n),
                Value::String(s) => duration::parse_duration(&s.to_string_lossy()),
                other => {
                    return Err(runtime_error(format!(
                        "timeout: expected seconds or a duration string, not a {}",
                        other.type_name()
                    )));
                }
            }
            .map_err(|e| runtime_error(format!("timeout: {e}")))?;
            ud.borrow::<HttpRequest>()?.update(|b| b.timeout(d))?;
            Ok(ud)
        });
        methods.add_async_method("send", |_, this, ()| async move {
            let builder = this
                .0
                .lock()
                .take()
                .ok_or_else(|| runtime_error("this request has already been sent".into()))?;
            let response = builder
                .send()
                .await
                .map_err(|e| runtime_error(format!("HTTP request failed: {e}")))?;
            let status = response.status();
            let headers = response
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = response
                .bytes()
                .await
                .map_err(|e| runtime_error(format!("reading the HTTP response failed: {e}")))?
                .to_vec();
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        });
    }
}

impl UserData for HttpResponse {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("status_code", |_, this, ()| Ok(this.status.as_u16()));
        methods.add_method("status_reason", |_, this, ()| {
            Ok(this.status.canonical_reason().unwrap_or("").to_string())
        });
        methods.add_method("status_is_informational", |_, this, ()| {
            Ok(this.status.is_informational())
        });
        methods.add_method("status_is_success", |_, this, ()| {
            Ok(this.status.is_success())
        });
        methods.add_method("status_is_redirection", |_, this, ()| {
            Ok(this.status.is_redirection())
        });
        methods.add_method("status_is_client_error", |_, this, ()| {
            Ok(this.status.is_client_error())
        });
        methods.add_method("status_is_server_error", |_, this, ()| {
            Ok(this.status.is_server_error())
        });
        methods.add_method("text", |_, this, ()| {
            Ok(String::from_utf8_lossy(&this.body).into_owned())
        });
        methods.add_method("bytes", |lua, this, ()| lua.create_string(&this.body));
        methods.add_method("headers", |lua, this, ()| {
            let t = lua.create_table()?;
            for (k, v) in &this.headers {
                t.set(k.as_str(), v.as_str())?;
            }
            Ok(t)
        });
    }
}

pub fn build_module(lua: &Lua) -> mlua::Result<Table> {
    let http = lua.create_table()?;
    http.set(
        "build_client",
        lua.create_function(|lua, options: Option<Value>| {
            let options: ClientOptions = match options {
                Some(v) => from_table(lua, "http.build_client", v)?,
                None => ClientOptions::default(),
            };
            let mut builder = reqwest::Client::builder().user_agent(
                options
                    .user_agent
                    .unwrap_or_else(|| format!("sluice-mta/{}", env!("CARGO_PKG_VERSION"))),
            );
            if let Some(t) = options.connect_timeout {
                builder = builder.connect_timeout(t);
            }
            if let Some(t) = options.timeout {
                builder = builder.timeout(t);
            }
            if let Some(t) = options.pool_idle_timeout {
                builder = builder.pool_idle_timeout(t);
            }
            let client = builder
                .build()
                .map_err(|e| runtime_error(format!("http.build_client: {e}")))?;
            Ok(HttpClient(client))
        })?,
    )?;
    Ok(http)
}
