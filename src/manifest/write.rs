//! Writing objects back as YAML, as serde_yaml (libyaml's emitter) did.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Writes an object as YAML as tailguard always has (serde_yaml 0.9, i.e.
/// libyaml's emitter, wrote `inject` output and the chart's fallback policy):
/// block style, sequences not indented under their key, `{}`/`[]` when empty,
/// each string value in the style libyaml picks for it (`style_of`).
///
/// Byte for byte the same for what manifests hold; serde-saphyr differs only
/// on rarities (the output reads back the same): keys that need quotes get
/// double quotes, not single, as do keys with `:` or `,[]{}`; a few values
/// libyaml wrote plain are quoted (`:x`, `.`, `1_000`, `0X1F`, `inf`, `nan`,
/// `tRUE`, `nULL`); a string starting with a line break gets no `|2`
/// indentation indicator; U+2028/U+2029 are escaped in double quotes; floats
/// in exponent form are written `1.0e+20`, not `1e20`.
pub fn to_yaml(value: &Value) -> Result<String, serde_saphyr::SerializeError> {
    let options = serde_saphyr::ser_options! {
        // Quote by the YAML 1.2 core schema, as serde_yaml did (`style_of`
        // decides for strings; this covers keys), without a `%YAML` header.
        yaml_12: true,
        no_lang_directive: true,
        // Long and multi-line strings: `style_of` decides.
        prefer_block_scalars: false,
    };
    serde_saphyr::to_string_with_options(&Styled(value), options)
}

/// How a string is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

/// The style serde_yaml 0.9 gave a string in block context: a literal block
/// when it has a line break, single quotes when it would read back as another
/// type, else plain; each falling back as libyaml's emitter does
/// (`yaml_emitter_analyze_scalar`, `yaml_emitter_select_scalar_style`) when
/// the content does not allow it.
fn style_of(s: &str) -> Style {
    if s.is_empty() {
        return Style::SingleQuoted;
    }
    // libyaml's printable set: tab, CR and C1 controls are not.
    let printable = |c: char| {
        matches!(c, '\n' | ' '..='~' | '\u{A0}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
            && c != '\u{FEFF}'
    };
    let is_break = |c: char| matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}');
    let blank_or_end = |c: Option<char>| c.is_none_or(|c| matches!(c, ' ' | '\t' | '\0') || is_break(c));
    let chars: Vec<char> = s.chars().collect();
    let mut indicators = s.starts_with("---") || s.starts_with("...");
    let (mut special, mut line_breaks, mut break_space, mut space_break) = (false, false, false, false);
    let (mut previous_space, mut previous_break, mut preceded_by_blank) = (false, false, true);
    for (i, &c) in chars.iter().enumerate() {
        let followed_by_blank = blank_or_end(chars.get(i + 1).copied());
        indicators |= if i == 0 {
            matches!(
                c,
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"' | '%' | '@' | '`'
            ) || (matches!(c, '?' | ':' | '-') && followed_by_blank)
        } else {
            (c == ':' && followed_by_blank) || (c == '#' && preceded_by_blank)
        };
        special |= !printable(c);
        if c == ' ' {
            break_space |= previous_break;
            (previous_space, previous_break) = (true, false);
        } else if is_break(c) {
            line_breaks = true;
            space_break |= previous_space;
            (previous_space, previous_break) = (false, true);
        } else {
            (previous_space, previous_break) = (false, false);
        }
        preceded_by_blank = blank_or_end(Some(c));
    }
    let edge = |c: Option<&char>| c.is_some_and(|&c| c == ' ' || is_break(c));
    let trailing_space = chars.last() == Some(&' ');
    let plain_allowed = !(edge(chars.first())
        || edge(chars.last())
        || break_space
        || space_break
        || special
        || line_breaks
        || indicators);
    // Beyond libyaml: serde-saphyr writes none of these in single quotes.
    let single_allowed = !(break_space
        || space_break
        || special
        || s.chars()
            .any(|c| matches!(c, '\u{2028}' | '\u{2029}' | '\u{FFFE}' | '\u{FFFF}')));
    let block_allowed = !(trailing_space || space_break || special);
    if s.contains('\n') {
        return if block_allowed {
            Style::Literal
        } else {
            Style::DoubleQuoted
        };
    }
    if plain_allowed && !reads_as_non_string(s) {
        Style::Plain
    } else if single_allowed {
        Style::SingleQuoted
    } else {
        Style::DoubleQuoted
    }
}

/// Whether serde_yaml 0.9 would read `s`, unquoted, as something other than a
/// string (null, a boolean, an integer, a finite float, or digits with a
/// leading zero), so it quoted it. Mirrors its `visit_untagged_scalar`.
fn reads_as_non_string(s: &str) -> bool {
    let leading_zero_digits = {
        let s = s.strip_prefix(['-', '+']).unwrap_or(s);
        s.len() > 1 && s.starts_with('0') && s[1..].bytes().all(|b| b.is_ascii_digit())
    };
    const RADIXES: [(&str, u32); 3] = [("0x", 16), ("0o", 8), ("0b", 2)];
    let unsigned_int = || {
        let unpositive = s.strip_prefix('+').unwrap_or(s);
        for (prefix, radix) in RADIXES {
            if let Some(digits) = unpositive.strip_prefix(prefix) {
                if digits.starts_with(['+', '-']) {
                    return false;
                }
                if u128::from_str_radix(digits, radix).is_ok() {
                    return true;
                }
            }
        }
        !unpositive.starts_with(['+', '-']) && !leading_zero_digits && unpositive.parse::<u128>().is_ok()
    };
    let negative_int = || {
        RADIXES.iter().any(|&(prefix, radix)| {
            s.strip_prefix('-')
                .and_then(|rest| rest.strip_prefix(prefix))
                .is_some_and(|digits| i128::from_str_radix(&format!("-{digits}"), radix).is_ok())
        }) || (!leading_zero_digits && s.parse::<i128>().is_ok())
    };
    let float = || {
        let unpositive = match s.strip_prefix('+') {
            Some(rest) if rest.starts_with(['+', '-']) => return false,
            Some(rest) => rest,
            None => s,
        };
        matches!(unpositive, ".inf" | ".Inf" | ".INF")
            || matches!(s, "-.inf" | "-.Inf" | "-.INF" | ".nan" | ".NaN" | ".NAN")
            || unpositive.parse::<f64>().is_ok_and(f64::is_finite)
    };
    matches!(
        s,
        "~" | "null" | "Null" | "NULL" | "true" | "True" | "TRUE" | "false" | "False" | "FALSE"
    ) || unsigned_int()
        || negative_int()
        || leading_zero_digits
        || float()
}

/// A JSON value serialized with `style_of` deciding each string's style.
struct Styled<'a>(&'a Value);

impl Serialize for Styled<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::String(s) => match style_of(s) {
                Style::Plain => serializer.serialize_str(s),
                Style::SingleQuoted => serde_saphyr::SingleQuoted(s.as_str()).serialize(serializer),
                Style::DoubleQuoted => serde_saphyr::DoubleQuoted(s.as_str()).serialize(serializer),
                Style::Literal => serde_saphyr::LitStr(s).serialize(serializer),
            },
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Styled(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = serializer.serialize_map(Some(map.len()))?;
                for (key, value) in map {
                    out.serialize_entry(key, &Styled(value))?;
                }
                out.end()
            }
            other => other.serialize(serializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse_document, parse_stream};
    use super::*;

    #[test]
    fn writes_yaml_as_serde_yaml_did() {
        let value = serde_json::json!({
            "metadata": {"name": "web", "annotations": {"tailguard.io/exit-node": "100.64.0.1"}, "labels": {}},
            "spec": {"containers": [{"name": "a", "args": [], "env": [
                {"name": "EMPTY", "value": ""},
                {"name": "BOOL", "value": "true"},
                {"name": "NUM", "value": "8080"},
                {"name": "OCTAL", "value": "0440"},
                {"name": "YES", "value": "yes"},
                {"name": "ADDR", "value": "[::]:9002"},
                {"name": "QUOTE", "value": "it's: here"},
                {"name": "TAB", "value": "a\tb"},
                {"name": "SCRIPT", "value": "set -e\nexec app\n"},
                {"name": "TRIM", "value": "one\ntwo"},
                {"name": "SPACE", "value": " x"}
            ]}], "replicas": 2, "ratio": 0.5, "enabled": false, "none": null}
        });
        let expected = "metadata:
  name: web
  annotations:
    tailguard.io/exit-node: 100.64.0.1
  labels: {}
spec:
  containers:
  - name: a
    args: []
    env:
    - name: EMPTY
      value: ''
    - name: BOOL
      value: 'true'
    - name: NUM
      value: '8080'
    - name: OCTAL
      value: '0440'
    - name: YES
      value: yes
    - name: ADDR
      value: '[::]:9002'
    - name: QUOTE
      value: 'it''s: here'
    - name: TAB
      value: \"a\\tb\"
    - name: SCRIPT
      value: |
        set -e
        exec app
    - name: TRIM
      value: |-
        one
        two
    - name: SPACE
      value: ' x'
  replicas: 2
  ratio: 0.5
  enabled: false
  none: null
";
        assert_eq!(to_yaml(&value).expect("yaml"), expected);
        // What it writes reads back as the same value.
        assert_eq!(parse_document(expected).expect("valid"), value);
    }

    #[test]
    fn block_scalars_keep_their_content() {
        let text = "kind: ConfigMap\ndata:\n  a: |\n    line one\n    --- not a marker\n";
        let (docs, errors) = parse_stream("f", text);
        assert!(errors.is_empty());
        assert_eq!(docs[0].object["data"]["a"], "line one\n--- not a marker\n");
    }
}
