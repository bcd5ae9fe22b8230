//! The one place JSON Patches are built: explicit RFC 6902 `add` operations,
//! with JSON Pointer escaping (`~` and `/` in keys) done by the pointer type.

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use serde_json::Value;

/// Builds a patch under a prefix (`""` for a Pod, `/spec/template` for a
/// workload's pod template).
pub struct PatchBuilder {
    prefix: Vec<String>,
    ops: Vec<PatchOperation>,
}

impl PatchBuilder {
    pub fn new(prefix: &[&str]) -> Self {
        PatchBuilder {
            prefix: prefix.iter().map(|s| (*s).to_owned()).collect(),
            ops: Vec::new(),
        }
    }

    fn pointer(&self, tokens: &[&str]) -> PointerBuf {
        PointerBuf::from_tokens(self.prefix.iter().map(String::as_str).chain(tokens.iter().copied()))
    }

    /// `add` at `tokens` (unescaped path segments) below the prefix.
    pub fn add(&mut self, tokens: &[&str], value: Value) {
        let path = self.pointer(tokens);
        self.ops.push(PatchOperation::Add(AddOperation { path, value }));
    }

    /// Sets `key` in the map at `map_tokens`, creating the map when `exists` is false.
    pub fn set_key(&mut self, map_tokens: &[&str], exists: bool, key: &str, value: Value) {
        if exists {
            let mut tokens = map_tokens.to_vec();
            tokens.push(key);
            self.add(&tokens, value);
        } else {
            self.add(map_tokens, serde_json::json!({ key: value }));
        }
    }

    /// Appends `items` to the array at `tokens`, creating it when `exists` is false.
    pub fn append(&mut self, tokens: &[&str], exists: bool, items: Vec<Value>) {
        if exists {
            let mut end = tokens.to_vec();
            end.push("-");
            for item in items {
                self.add(&end, item);
            }
        } else {
            self.add(tokens, Value::Array(items));
        }
    }

    /// Inserts `item` first in the array at `tokens`, creating it when `exists` is false.
    pub fn prepend(&mut self, tokens: &[&str], exists: bool, item: Value) {
        if exists {
            let mut first = tokens.to_vec();
            first.push("0");
            self.add(&first, item);
        } else {
            self.add(tokens, Value::Array(vec![item]));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn build(self) -> Patch {
        Patch(self.ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_keys_and_creates_missing_containers() {
        let mut p = PatchBuilder::new(&["spec", "template"]);
        p.set_key(&["metadata", "annotations"], true, "tailguard.io/injected", json!("x"));
        p.set_key(&["metadata", "labels"], false, "a~b", json!("y"));
        p.append(&["spec", "volumes"], true, vec![json!(1), json!(2)]);
        p.prepend(&["spec", "initContainers"], false, json!({"name": "ts"}));
        let v = serde_json::to_value(p.build()).expect("json");
        let paths: Vec<&str> = v
            .as_array()
            .expect("ops")
            .iter()
            .filter_map(|op| op["path"].as_str())
            .collect();
        assert_eq!(
            paths,
            vec![
                "/spec/template/metadata/annotations/tailguard.io~1injected",
                "/spec/template/metadata/labels",
                "/spec/template/spec/volumes/-",
                "/spec/template/spec/volumes/-",
                "/spec/template/spec/initContainers",
            ]
        );
        assert_eq!(v[1]["value"], json!({"a~b": "y"}));
    }
}
