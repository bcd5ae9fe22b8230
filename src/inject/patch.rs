//! The one place JSON Patches are built: explicit RFC 6902 `add` operations,
//! with JSON Pointer escaping (`~` and `/` in keys) done by the pointer type.
//!
//! The patch is written as JSON text while it is built: its values are JSON
//! rendered once per sidecar settings (the memo keeps them as text), so an
//! injection copies bytes instead of cloning, serializing and dropping trees
//! of `Value`s. The text is what `json_patch::Patch` would serialize to.

use std::fmt;

use json_patch::jsonptr::PointerBuf;
use serde_json::value::RawValue;

/// An RFC 6902 JSON Patch, as the JSON text sent in the admission response.
#[derive(Clone, PartialEq, Eq)]
pub struct JsonPatch(Vec<u8>);

impl JsonPatch {
    /// The JSON text (UTF-8).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == b"[]"
    }

    /// The operations, to apply the patch (`tailguard inject`, tests).
    pub fn operations(&self) -> Result<json_patch::Patch, serde_json::Error> {
        serde_json::from_slice(&self.0)
    }
}

impl fmt::Debug for JsonPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Builds a patch under a prefix (`""` for a Pod, `/spec/template` for a
/// workload's pod template).
pub struct PatchBuilder {
    prefix: Vec<String>,
    /// The operations written so far, without the closing `]`.
    text: Vec<u8>,
}

impl PatchBuilder {
    pub fn new(prefix: &[&str]) -> Self {
        PatchBuilder {
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            text: vec![b'['],
        }
    }

    /// `add` at `tokens` (unescaped path segments) below the prefix.
    pub fn add(&mut self, tokens: &[&str], value: &RawValue) {
        self.add_json(tokens, |text| text.extend_from_slice(value.get().as_bytes()));
    }

    /// Writes one `add` operation; `value` writes valid JSON (from `RawValue`s
    /// and JSON strings only).
    fn add_json(&mut self, tokens: &[&str], value: impl FnOnce(&mut Vec<u8>)) {
        let path = PointerBuf::from_tokens(self.prefix.iter().map(String::as_str).chain(tokens.iter().copied()));
        if self.text.len() > 1 {
            self.text.push(b',');
        }
        self.text.extend_from_slice(br#"{"op":"add","path":"#);
        push_json_string(&mut self.text, path.as_str());
        self.text.extend_from_slice(br#","value":"#);
        value(&mut self.text);
        self.text.push(b'}');
    }

    /// Sets `key` in the map at `map_tokens`, creating the map when `exists` is false.
    pub fn set_key(&mut self, map_tokens: &[&str], exists: bool, key: &str, value: &RawValue) {
        if exists {
            let mut tokens = map_tokens.to_vec();
            tokens.push(key);
            self.add(&tokens, value);
        } else {
            self.add_json(map_tokens, |text| {
                text.push(b'{');
                push_json_string(text, key);
                text.push(b':');
                text.extend_from_slice(value.get().as_bytes());
                text.push(b'}');
            });
        }
    }

    /// Appends `items` to the array at `tokens`, creating it when `exists` is false.
    pub fn append(&mut self, tokens: &[&str], exists: bool, items: &[&RawValue]) {
        if exists {
            let mut end = tokens.to_vec();
            end.push("-");
            for item in items {
                self.add(&end, item);
            }
        } else {
            self.add_json(tokens, |text| {
                text.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        text.push(b',');
                    }
                    text.extend_from_slice(item.get().as_bytes());
                }
                text.push(b']');
            });
        }
    }

    /// Inserts `item` first in the array at `tokens`, creating it when `exists` is false.
    pub fn prepend(&mut self, tokens: &[&str], exists: bool, item: &RawValue) {
        if exists {
            let mut first = tokens.to_vec();
            first.push("0");
            self.add(&first, item);
        } else {
            self.append(tokens, false, &[item]);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.len() == 1
    }

    pub fn build(mut self) -> JsonPatch {
        self.text.push(b']');
        JsonPatch(self.text)
    }
}

/// Writes `s` as a JSON string (serde_json's escaping; writing a `str` into a
/// `Vec` cannot fail).
fn push_json_string(text: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(text, s);
}

/// `value` rendered once as JSON text, for patches built from it later.
pub fn to_raw(value: &impl serde::Serialize) -> Box<RawValue> {
    // Kubernetes types and `Value`s always serialize; `null` is unreachable.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use json_patch::{AddOperation, Patch, PatchOperation};
    use serde_json::{Value, json};

    fn raw(v: Value) -> Box<RawValue> {
        to_raw(&v)
    }

    #[test]
    fn escapes_keys_and_creates_missing_containers() {
        let mut p = PatchBuilder::new(&["spec", "template"]);
        assert!(p.is_empty());
        p.set_key(
            &["metadata", "annotations"],
            true,
            "tailguard.io/injected",
            &raw(json!("x")),
        );
        p.set_key(&["metadata", "labels"], false, "a~b\"", &raw(json!("y")));
        p.append(&["spec", "volumes"], true, &[&raw(json!(1)), &raw(json!({"n": [2]}))]);
        p.prepend(&["spec", "initContainers"], false, &raw(json!({"name": "ts"})));
        p.prepend(&["spec", "containers"], true, &raw(json!({"name": "é\n"})));
        p.append(&["spec", "env"], false, &[&raw(json!(1)), &raw(json!(2))]);
        assert!(!p.is_empty());
        let patch = p.build();

        // The same operations built as json_patch's types serialize to the same bytes.
        let op = |path: &str, value: Value| {
            PatchOperation::Add(AddOperation {
                path: PointerBuf::parse(path).expect("pointer"),
                value,
            })
        };
        let expected = Patch(vec![
            op("/spec/template/metadata/annotations/tailguard.io~1injected", json!("x")),
            op("/spec/template/metadata/labels", json!({"a~b\"": "y"})),
            op("/spec/template/spec/volumes/-", json!(1)),
            op("/spec/template/spec/volumes/-", json!({"n": [2]})),
            op("/spec/template/spec/initContainers", json!([{"name": "ts"}])),
            op("/spec/template/spec/containers/0", json!({"name": "é\n"})),
            op("/spec/template/spec/env", json!([1, 2])),
        ]);
        assert_eq!(patch.as_bytes(), serde_json::to_vec(&expected).expect("json"));
        assert_eq!(patch.operations().expect("parses"), expected);
    }

    #[test]
    fn an_empty_patch_is_an_empty_array() {
        let patch = PatchBuilder::new(&[]).build();
        assert!(patch.is_empty());
        assert_eq!(patch.operations().expect("parses"), json_patch::Patch(vec![]));
    }
}
