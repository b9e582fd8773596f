//! JSON Schema of the wire format, derived from the types in this crate.
//!
//! Sits beside the frame types: nothing in the gateway uses it at run time.
//! `clients/js/schema/protocol.json` is this schema, committed; the
//! TypeScript SDK generates its protocol types from that file, and tests on
//! both sides fail when the file, the Rust types and the TypeScript drift.

use crate::{CloseCode, Command, Message, Op, Reply};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use std::borrow::Cow;

/// A `message` frame: the publication's fields under `"op":"message"`.
#[derive(JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used
enum Delivery {
    /// A publication on a subscribed channel.
    Message(Message),
}

/// Every frame the server sends.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // only its schema is used
enum ServerFrame<'a> {
    Reply(Reply<'a>),
    Delivery(Delivery),
}

impl JsonSchema for Op<'_> {
    fn schema_name() -> Cow<'static, str> {
        "Op".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "The operation a client frame asks for.",
            "type": "string",
            "enum": Op::KNOWN,
        })
    }
}

impl JsonSchema for CloseCode {
    fn schema_name() -> Cow<'static, str> {
        "CloseCode".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        let codes: Vec<u16> = Self::ALL.iter().map(|c| c.code()).collect();
        json_schema!({
            "description": "Server close codes: 4000-4499 reconnect, 4500-4999 do not.",
            "type": "integer",
            "enum": codes,
        })
    }
}

/// The whole protocol as one JSON Schema document: `Command` is what a
/// client sends, `ServerFrame` what it receives, both under `$defs`.
pub fn protocol() -> serde_json::Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    generator.subschema_for::<Command<'static>>();
    generator.subschema_for::<ServerFrame<'static>>();
    let defs = generator.take_definitions(true);
    let codes: serde_json::Map<String, serde_json::Value> = CloseCode::ALL
        .iter()
        .map(|c| (c.as_str().to_owned(), c.reason().into()))
        .collect();
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Herald client protocol v1",
        "description": "Generated from the herald-proto crate; see docs/protocol.md.",
        "x-close-reasons": codes,
        "$defs": defs,
    })
}

/// The schema as the committed file holds it: pretty JSON, one newline at the end.
pub fn protocol_text() -> String {
    let mut text = serde_json::to_string_pretty(&protocol()).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../clients/js/schema/protocol.json"
    );

    /// The committed schema is this crate's; `BLESS=1 cargo test -p herald-proto schema`
    /// rewrites it after a deliberate protocol change.
    #[test]
    fn committed_schema_matches_the_types() {
        let fresh = protocol_text();
        if std::env::var_os("BLESS").is_some() {
            std::fs::write(COMMITTED, &fresh).expect("write schema");
        }
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == fresh,
            "clients/js/schema/protocol.json is stale: run `BLESS=1 cargo test -p herald-proto schema`, then `npm run generate` in clients/js"
        );
    }

    #[test]
    fn every_known_op_decodes_as_itself() {
        for op in Op::KNOWN {
            let text = format!(r#"{{"op":"{op}"}}"#);
            let cmd = Command::decode(&text).expect("decodes");
            assert!(!matches!(cmd.op, Op::Unknown(_)), "{op}");
        }
    }

    #[test]
    fn a_built_message_frame_is_valid_against_its_schema_shape() {
        let data = serde_json::value::RawValue::from_string("[1]".to_owned()).expect("json");
        let mut frame = crate::MessageFrame::prefix("c", "e", &data);
        crate::MessageFrame::finish(&mut frame, "E", 7);
        let v: serde_json::Value = serde_json::from_slice(&frame).expect("json");
        let schema = protocol();
        let msg = &schema["$defs"]["Message"];
        let mut props: Vec<&String> = msg["properties"]
            .as_object()
            .expect("fields")
            .keys()
            .collect();
        let op = "op".to_owned();
        props.push(&op);
        props.sort();
        let mut keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        keys.sort();
        assert_eq!(
            keys, props,
            "the built frame and the schema name the same fields"
        );
    }
}
