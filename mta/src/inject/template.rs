//! Templated injection, as KumoMTA does it: unless the request's
//! `template_dialect` is `Static`, the raw content, or the built content's
//! subject, bodies, `From`/`Reply-To` and headers, are MiniJinja templates.
//! Each recipient's variables are the request's `substitutions`, then
//! `email`, `name` and `to_header`, then the recipient's own
//! `substitutions` over them. Templates are compiled once per request, so a
//! syntax error refuses the whole request (422) naming the field; a
//! rendering error fails only that recipient. The HTML body is named
//! `.html`, so values put into it are HTML-escaped.

use super::{Builder, Content, InjectError, InjectRequest, Recipient, mailbox};
use minijinja::Environment;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// `template_dialect`: which engine expands the content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Dialect {
    /// MiniJinja (the default).
    #[default]
    Jinja,
    /// No expansion: the content is sent as given.
    Static,
    /// A Handlebars engine: not built; refused (422) rather than sent
    /// unexpanded.
    Handlebars,
}

/// One part of the content that is a template.
pub struct Field<'a> {
    /// Where it is in the request (`content.text_body`), for errors.
    pub label: String,
    /// The template's name (its extension chooses the escaping).
    pub name: String,
    /// The template text.
    pub source: Cow<'a, str>,
}

/// The templated parts of `content`, in a fixed order.
pub fn fields<'a>(content: &'a Content, sender: &str) -> Vec<Field<'a>> {
    fn field<'s>(label: &str, name: &str, source: Cow<'s, str>) -> Field<'s> {
        Field {
            label: label.to_string(),
            name: name.to_string(),
            source,
        }
    }
    let b = match content {
        Content::Raw(text) => return vec![field("content", "content", Cow::Borrowed(text))],
        Content::Builder(b) => b,
    };
    let mut out = vec![];
    let from = match &b.from {
        Some(a) => mailbox(&a.email, a.name.as_deref()),
        None => mailbox(sender, None),
    };
    out.push(field("content.from", "from", Cow::Owned(from)));
    if let Some(r) = &b.reply_to {
        let r = mailbox(&r.email, r.name.as_deref());
        out.push(field("content.reply_to", "reply_to", Cow::Owned(r)));
    }
    if let Some(s) = &b.subject {
        out.push(field("content.subject", "subject", Cow::Borrowed(s)));
    }
    if let Some(t) = &b.text_body {
        out.push(field(
            "content.text_body",
            "text_body.txt",
            Cow::Borrowed(t),
        ));
    }
    if let Some(h) = &b.html_body {
        out.push(field(
            "content.html_body",
            "html_body.html",
            Cow::Borrowed(h),
        ));
    }
    for (k, v) in &b.headers {
        let text = match v.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(v.to_string()),
        };
        out.push(field(
            &format!("content.headers.{k}"),
            &format!("headers[{k}]"),
            text,
        ));
    }
    out
}

/// The request's templates, compiled: `None` for `Static`.
pub fn compile<'a>(
    dialect: Dialect,
    fields: &'a [Field<'a>],
) -> Result<Option<Environment<'a>>, InjectError> {
    match dialect {
        Dialect::Static => return Ok(None),
        Dialect::Handlebars => return Err(InjectError::Dialect("Handlebars")),
        Dialect::Jinja => {}
    }
    let mut env = Environment::new();
    // a message's last line ending is part of it
    env.set_keep_trailing_newline(true);
    for f in fields {
        env.add_template(&f.name, &f.source)
            .map_err(|e| InjectError::Template {
                field: f.label.clone(),
                error: e.to_string(),
            })?;
    }
    Ok(Some(env))
}

/// Check the request's templates compile, for a 422 before anything is
/// generated.
pub fn check(req: &InjectRequest) -> Result<(), InjectError> {
    let fields = fields(&req.content, &req.envelope_sender);
    compile(req.template_dialect, &fields).map(|_| ())
}

/// The variables of `rcpt`'s message.
pub fn variables(req: &InjectRequest, rcpt: &Recipient) -> Value {
    let mut vars: Map<String, Value> = req.substitutions.clone();
    vars.insert("email".into(), rcpt.email.clone().into());
    if let Some(n) = &rcpt.name {
        vars.insert("name".into(), n.clone().into());
    }
    vars.insert(
        "to_header".into(),
        mailbox(&rcpt.email, rcpt.name.as_deref()).into(),
    );
    vars.extend(rcpt.substitutions.clone());
    Value::Object(vars)
}

/// A field that failed to expand for one recipient.
#[derive(Debug, thiserror::Error)]
#[error("expanding {field}: {error}")]
pub struct ExpandError {
    /// Where in the request.
    pub field: String,
    /// MiniJinja's error.
    pub error: minijinja::Error,
}

/// Each field of `fields` expanded with `vars` (as given under `Static`),
/// by template name.
pub fn expand(
    env: Option<&Environment<'_>>,
    fields: &[Field<'_>],
    vars: &Value,
) -> Result<Vec<(String, String)>, ExpandError> {
    fields
        .iter()
        .map(|f| {
            let text = match env {
                None => f.source.to_string(),
                Some(env) => env
                    .get_template(&f.name)
                    .and_then(|t| t.render(vars))
                    .map_err(|error| ExpandError {
                        field: f.label.clone(),
                        error,
                    })?,
            };
            Ok((f.name.clone(), text))
        })
        .collect()
}

/// The expanded parts of built content, for [`Builder::render`].
pub struct Expanded {
    parts: Vec<(String, String)>,
}

impl Expanded {
    /// Wrap the result of [`expand`].
    pub fn new(parts: Vec<(String, String)>) -> Expanded {
        Expanded { parts }
    }

    /// The expanded text of the template `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// The expanded headers, in the request's order.
    pub fn headers<'b>(&'b self, b: &'b Builder) -> impl Iterator<Item = (&'b str, &'b str)> {
        b.headers
            .keys()
            .filter_map(move |k| self.get(&format!("headers[{k}]")).map(|v| (k.as_str(), v)))
    }
}
