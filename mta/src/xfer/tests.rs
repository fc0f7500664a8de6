use super::*;
use crate::message::Message;
use serde_json::json;

fn message(meta: serde_json::Value) -> crate::message::MessageRef {
    let msg = Message::new(
        MessageId::new(),
        "a@example.org".into(),
        vec!["b@example.com".into()],
        meta.as_object().unwrap().clone(),
        b"Subject: x\r\n\r\nhello\r\n".to_vec(),
    );
    msg.state().num_attempts = 2;
    msg.state().due = Some(1_900_000_000_000);
    msg
}

#[test]
fn queue_names_carry_the_target_with_a_slash() {
    let q = queue_name("http://10.0.0.2:8000");
    assert_eq!(q, "http://10.0.0.2:8000/.xfer.kumomta.internal");
    assert_eq!(target_of(&q), Some("http://10.0.0.2:8000/"));
    assert_eq!(queue_name("http://10.0.0.2:8000/"), q);
    assert_eq!(target_of("example.com"), None);
    assert_eq!(target_of(SUFFIX), None);
    assert_eq!(
        queue_config("http://x/").protocol,
        Protocol::Xfer("http://x/".into())
    );
}

#[test]
fn binding_keeps_the_own_queue_and_unbinding_restores_it() {
    let msg = message(json!({"tenant": "acme"}));
    let xq = bind(&msg, "http://b:8000").unwrap();
    assert_eq!(msg.meta_string("queue").unwrap(), xq);
    assert_eq!(target(&msg).as_deref(), Some("http://b:8000/"));
    assert_eq!(msg.state().due, None, "due now in the xfer queue");
    assert_eq!(bind(&msg, "http://b:8000/"), None, "bound there already");
    let info = saved(&msg).unwrap();
    assert_eq!((info.num_attempts, info.due), (2, Some(1_900_000_000_000)));
    assert!(unbind(&msg));
    assert_eq!(msg.meta_string("queue"), None);
    assert_eq!(msg.state().due, Some(1_900_000_000_000));
    assert!(!msg.state().meta.contains_key(INFO_KEY));
    assert!(!unbind(&msg), "not bound any more");

    // a message with its own meta queue gets it back; a second target
    // replaces the first without losing it
    let msg = message(json!({"queue": "custom.example"}));
    bind(&msg, "http://b:8000").unwrap();
    bind(&msg, "http://c:8000").unwrap();
    assert_eq!(target(&msg).as_deref(), Some("http://c:8000/"));
    unbind(&msg);
    assert_eq!(msg.meta_string("queue").as_deref(), Some("custom.example"));
}

#[test]
fn a_transfer_carries_the_message_as_its_own_queue_has_it() {
    let msg = message(json!({"campaign": "spring"}));
    bind(&msg, "http://b:8000").unwrap();
    msg.state().num_attempts = 7; // failed transfers do not count there
    let body = encode(&msg, "node-a", &msg.data().unwrap());
    let (header, id, data) = decode(&body).unwrap();
    assert_eq!(id, msg.id);
    assert_eq!(header.from_node, "node-a");
    assert_eq!(data, b"Subject: x\r\n\r\nhello\r\n");
    let m = header.message;
    assert_eq!((m.num_attempts, m.due), (2, Some(1_900_000_000_000)));
    assert_eq!(m.meta, *json!({"campaign": "spring"}).as_object().unwrap());
    assert_eq!(m.recipient, ["b@example.com"]);

    for bad in [&b"no newline"[..], b"{}\nbody", b"not json\nbody"] {
        assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}
