//! Templated HTTP injection (KumoMTA's `POST /api/inject/v1` with
//! MiniJinja): the request's and each recipient's `substitutions`, `email`,
//! `name` and `to_header` expand the subject, bodies and headers of built
//! content, or raw content; the HTML body escapes what it is given;
//! `Static` sends the content as written; a template that does not compile
//! is a 422 naming the field, one that fails for a recipient fails only
//! that recipient.

use serde_json::{Value, json};
use sluice_tests::*;
use std::time::Duration;

fn templating_mta() -> (Mta, u16) {
    let admin = free_port();
    let mta = Mta::start(&policy_with_init(
        &format!("kumo.start_http_listener {{ listen = '127.0.0.1:{admin}' }}"),
        "",
        "kumo.on('get_queue_config', function(domain)\n  \
         return kumo.make_queue_config { protocol = { maildir_path = '{DIR}/maildir' } }\nend)\n",
    ));
    (mta, admin)
}

/// The delivered message of `rcpt` (its Delivery record names it).
fn message_for(mta: &Mta, rcpt: &str) -> String {
    mta.maildir_files("maildir")
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .find(|m| m.contains(&format!("X-Rcpt: {rcpt}\r\n")))
        .unwrap_or_else(|| panic!("no message for {rcpt}"))
}

fn inject(admin: u16, body: &Value) -> Value {
    http_request(admin, "/api/inject/v1", Some(&body.to_string()))
}

#[test]
fn substitutions_expand_built_and_raw_content_per_recipient() {
    let (mta, admin) = templating_mta();
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "substitutions": { "code": "GLOBAL", "campaign": "spring" },
            "recipients": [
                { "email": "ann@example.com", "name": "Ann <&> Co",
                  "substitutions": { "code": "ANN-1" } },
                { "email": "bob@example.com" },
            ],
            "content": {
                "subject": "Hello {{ name | default('friend') }}",
                "text_body": "Dear {{ name }}, your code is {{ code }}.",
                "html_body": "<p>{{ name }}: {{ code }}</p>",
                "headers": { "X-Campaign": "{{ campaign | upper }}", "X-Rcpt": "{{ email }}" },
            },
        }),
    );
    assert_eq!(r["status"], 200, "{r}");
    let answer: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["success_count"], 2, "{answer}");
    mta.wait_for_records(Duration::from_secs(10), "two deliveries", |r| {
        count(r, "Delivery") == 2
    });
    let ann = message_for(&mta, "ann@example.com");
    for want in [
        "Subject: Hello Ann <&> Co\r\n",
        "X-Campaign: SPRING\r\n",
        "Dear Ann <&> Co, your code is ANN-1.",
        // the HTML part escapes the value it is given
        "<p>Ann &lt;&amp;&gt; Co: ANN-1</p>",
    ] {
        assert!(ann.contains(want), "{want:?} in {ann}");
    }
    let bob = message_for(&mta, "bob@example.com");
    for want in ["Subject: Hello friend\r\n", "Dear , your code is GLOBAL."] {
        assert!(bob.contains(want), "{want:?} in {bob}");
    }

    // raw content is one template; to_header is the generated To's value
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "substitutions": { "n": 41 },
            "recipients": [{ "email": "cat@example.com", "name": "Cat" }],
            "content": "To: {{ to_header }}\nX-Rcpt: {{ email }}\nSubject: raw\n\nanswer {{ n + 1 }}\n",
        }),
    );
    assert_eq!(r["status"], 200, "{r}");
    mta.wait_for_records(Duration::from_secs(10), "three deliveries", |r| {
        count(r, "Delivery") == 3
    });
    let cat = message_for(&mta, "cat@example.com");
    assert!(cat.contains("To: \"Cat\" <cat@example.com>\r\n"), "{cat}");
    assert!(cat.contains("answer 42\r\n"), "{cat}");

    // Static: sent as written
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "template_dialect": "Static",
            "recipients": [{ "email": "dan@example.com" }],
            "content": "X-Rcpt: dan@example.com\nSubject: {{ not expanded }}\n\n{{ name }}\n",
        }),
    );
    assert_eq!(r["status"], 200, "{r}");
    mta.wait_for_records(Duration::from_secs(10), "four deliveries", |r| {
        count(r, "Delivery") == 4
    });
    let dan = message_for(&mta, "dan@example.com");
    assert!(
        dan.contains("Subject: {{ not expanded }}\r\n\r\n{{ name }}\r\n"),
        "{dan}"
    );
}

#[test]
fn a_broken_template_is_a_422_and_a_failing_one_fails_its_recipient() {
    let (mta, admin) = templating_mta();
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "recipients": [{ "email": "ann@example.com", "name": "Ann" }],
            "content": { "text_body": "Hello {{name}}, your code is {{code" },
        }),
    );
    assert_eq!(r["status"], 422, "{r}");
    let body = r["body"].as_str().unwrap();
    assert!(
        body.contains("failed parsing field 'content.text_body' as template: syntax error")
            && body.contains("text_body.txt:1"),
        "{body}"
    );
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "template_dialect": "Handlebars",
            "recipients": [{ "email": "ann@example.com" }],
            "content": "Subject: x\n\n{{name}}",
        }),
    );
    assert_eq!(r["status"], 422, "{r}");
    assert!(r["body"].as_str().unwrap().contains("Handlebars"), "{r}");

    // what Sluice does not build is refused, not dropped
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "recipients": [{ "email": "ann@example.com" }],
            "content": { "text_body": "x", "attachments": [{ "data": "eA==", "base64": true }] },
        }),
    );
    assert_eq!(r["status"], 422, "{r}");
    assert!(
        r["body"]
            .as_str()
            .unwrap()
            .contains("content.attachments is not supported"),
        "{r}"
    );

    // looping over a number fails for that recipient only
    let r = inject(
        admin,
        &json!({
            "envelope_sender": "news@example.org",
            "recipients": [
                { "email": "ok@example.com", "substitutions": { "items": ["a", "b"] } },
                { "email": "bad@example.com", "substitutions": { "items": 5 } },
            ],
            "content": "X-Rcpt: {{ email }}\nSubject: x\n\n{% for i in items %}{{ i }}{% endfor %}\n",
        }),
    );
    assert_eq!(r["status"], 200, "{r}");
    let answer: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["success_count"], 1, "{answer}");
    assert_eq!(
        answer["failed_recipients"],
        json!(["bad@example.com"]),
        "{answer}"
    );
    let error = answer["errors"][0].as_str().unwrap();
    assert!(
        error.starts_with("bad@example.com: expanding content: "),
        "{error}"
    );
    mta.wait_for_records(Duration::from_secs(10), "the delivery", |r| {
        count(r, "Delivery") == 1
    });
    assert!(message_for(&mta, "ok@example.com").contains("\r\n\r\nab\r\n"));
}
