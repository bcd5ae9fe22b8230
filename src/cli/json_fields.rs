//! Span fields for the JSON log format, recorded without re-reading them.
//!
//! tracing-subscriber's `JsonFields` keeps a span's fields as a JSON string
//! and, for every `Span::record`, parses that string back into a map, adds the
//! field and writes the map out again. The `review` span fills in five fields
//! once the review is done, so each review paid five parse-and-write rounds of
//! a growing object before its log line was even formatted. [`AppendJsonFields`]
//! writes a span's first fields the same way and appends later ones to the
//! object in place; only a field recorded a second time takes the old route,
//! so the string stays one valid object with one value per name, as the JSON
//! event formatter expects.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::{JsonFields, Writer};

/// `JsonFields` with appending `add_fields` (see the module docs).
#[derive(Debug, Default, Clone, Copy)]
pub struct AppendJsonFields;

impl<'writer> FormatFields<'writer> for AppendJsonFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        JsonFields::new().format_fields(writer, fields)
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        let mut added = Values::default();
        fields.record(&mut added);
        if added.0.is_empty() {
            return Ok(());
        }
        let object = current.fields.trim_end();
        let repeated = added.0.iter().any(|(name, _)| object.contains(&format!("\"{name}\":")));
        let Some(open) = object
            .strip_suffix('}')
            .filter(|_| !repeated && object.starts_with('{'))
        else {
            // No fields yet, a field set again, or not an object written here:
            // the whole object is written again, later values winning.
            let mut map: BTreeMap<String, serde_json::Value> = match object.is_empty() {
                true => BTreeMap::new(),
                false => serde_json::from_str(object).map_err(|_| fmt::Error)?,
            };
            map.extend(added.0.into_iter().map(|(name, value)| (name.to_owned(), value)));
            current.fields = serde_json::to_string(&map).map_err(|_| fmt::Error)?;
            return Ok(());
        };
        let mut out = Vec::with_capacity(object.len() + 24 * added.0.len());
        out.extend_from_slice(open.as_bytes());
        let mut first = open.trim_end().ends_with('{');
        for (name, value) in &added.0 {
            if !first {
                out.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut out, name).map_err(|_| fmt::Error)?;
            out.push(b':');
            serde_json::to_writer(&mut out, value).map_err(|_| fmt::Error)?;
        }
        out.push(b'}');
        current.fields = String::from_utf8(out).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Recorded fields as JSON values, named and valued as `JsonFields` does.
#[derive(Default)]
struct Values(Vec<(&'static str, serde_json::Value)>);

impl Visit for Values {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.push((field.name(), value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.push((field.name(), value.into()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.push((field.name(), value.into()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.push((field.name(), value.into()));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name(), value.into()));
    }
    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.0.push((field.name(), value.into()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let name = field.name();
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.0.push((name.strip_prefix("r#").unwrap_or(name), text.into()));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use tracing::field::Empty;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    /// Spans filled in the ways tailguard fills them, and an event in them.
    fn log() {
        let connection = tracing::info_span!("connection", conn = 7u64, peer = %"127.0.0.1:4000", protocol = Empty);
        let _c = connection.enter();
        connection.record("protocol", "h2");
        let review = tracing::info_span!(
            "review",
            endpoint = "validate",
            uid = Empty,
            kind = Empty,
            object = Empty,
            decision = Empty,
            micros = Empty,
            r#type = Empty,
        );
        let _r = review.enter();
        review
            .record("uid", "u-\"quoted\"\n")
            .record("decision", "allowed")
            .record("micros", 42u64)
            .record("kind", "DaemonSet")
            .record("object", tracing::field::debug(&["a", "b"]))
            .record("type", -3i64)
            // Set again: the later value is the one logged.
            .record("decision", "denied");
        tracing::info!(findings = 0, "review");
    }

    fn logged(fields: impl for<'w> FormatFields<'w> + Send + Sync + 'static) -> serde_json::Value {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .fmt_fields(fields)
            .with_writer(buffer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        let bytes = buffer.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut line = serde_json::from_slice::<serde_json::Value>(&bytes).expect("one JSON line");
        line.as_object_mut().expect("an object").remove("timestamp");
        line
    }

    #[test]
    fn lines_are_the_ones_json_fields_writes() {
        let appended = logged(AppendJsonFields);
        assert_eq!(appended, logged(JsonFields::new()));
        let span = &appended["span"];
        assert_eq!(span["uid"], "u-\"quoted\"\n", "{appended}");
        assert_eq!(span["decision"], "denied", "{appended}");
        assert_eq!(span["micros"], 42, "{appended}");
        assert_eq!(span["object"], "[\"a\", \"b\"]", "{appended}");
        assert_eq!(span["type"], -3, "{appended}");
        assert_eq!(appended["spans"][0]["protocol"], "h2", "{appended}");
    }
}
