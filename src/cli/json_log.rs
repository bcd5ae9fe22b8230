//! The JSON log format (`TAILGUARD_LOG_FORMAT=json`), the lines
//! tracing-subscriber's JSON formatter writes, without re-reading span fields.
//!
//! That formatter keeps a span's fields as a JSON string. Its `JsonFields`
//! parses the string back into a map, adds the field and writes the map out
//! again for every `Span::record`, and its event format parses every span's
//! string again to write it into the line (`span`, then each of `spans`). The
//! `review` span fills in five fields once the review is done, and its line
//! carries three spans: eight parses per review line. Here
//! [`AppendJsonFields`] writes a span's first fields the same way and appends
//! later ones to the object in place (a field recorded a second time takes
//! the old route, so the string stays one object with one value per name),
//! and [`JsonEvents`] has the library write the line without spans and copies
//! each span's stored object into it. The lines hold what the library's hold
//! (tested below); span fields recorded after a span was created come in the
//! order they were recorded rather than sorted by name.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::time::SystemTime;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::{LookupSpan, SpanRef};

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
        let repeated = added.0.iter().any(|(name, _)| has_key(object, name));
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
        // The new fields and the closing brace, put in place of the old one.
        let (open_len, mut first) = (open.len(), open.trim_end().ends_with('{'));
        let mut tail = Vec::with_capacity(24 * added.0.len());
        for (name, value) in &added.0 {
            if !first {
                tail.push(b',');
            }
            first = false;
            serde_json::to_writer(&mut tail, name).map_err(|_| fmt::Error)?;
            tail.push(b':');
            serde_json::to_writer(&mut tail, value).map_err(|_| fmt::Error)?;
        }
        tail.push(b'}');
        let tail = String::from_utf8(tail).map_err(|_| fmt::Error)?;
        current.fields.truncate(open_len);
        current.fields.push_str(&tail);
        Ok(())
    }
}

/// Whether `object` has the key `name` (a value that happens to hold
/// `"name":` also counts, which only sends the caller the slower way).
fn has_key(object: &str, name: &str) -> bool {
    object
        .match_indices(name)
        .any(|(at, _)| object[..at].ends_with('"') && object[at + name.len()..].starts_with("\":"))
}

/// The JSON event format, spans copied from [`AppendJsonFields`]' strings
/// (see the module docs).
pub struct JsonEvents {
    /// The library's format without spans: everything else in the line.
    inner: Format<Json, SystemTime>,
}

impl Default for JsonEvents {
    fn default() -> JsonEvents {
        JsonEvents {
            inner: tracing_subscriber::fmt::format()
                .json()
                .with_current_span(false)
                .with_span_list(false),
        }
    }
}

impl<S> FormatEvent<S, AppendJsonFields> for JsonEvents
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, AppendJsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // Which spans the library writes: `span` is the event's parent or the
        // current span; `spans` runs from the root to the current span.
        let Some(current) = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current())
        else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(512);
        self.inner.format_event(ctx, Writer::new(&mut line), event)?;
        let Some(open) = line.trim_end().strip_suffix('}') else {
            return writer.write_str(&line);
        };
        writer.write_str(open)?;
        writer.write_str(",\"span\":")?;
        write_span(&mut writer, &current)?;
        writer.write_str(",\"spans\":[")?;
        if let Some(leaf) = ctx.lookup_current() {
            for (i, span) in leaf.scope().from_root().enumerate() {
                if i > 0 {
                    writer.write_char(',')?;
                }
                write_span(&mut writer, &span)?;
            }
        }
        writer.write_str("]}\n")
    }
}

/// A span as the library writes it: its fields, then its `name`.
fn write_span<S: for<'a> LookupSpan<'a>>(writer: &mut Writer<'_>, span: &SpanRef<'_, S>) -> fmt::Result {
    let extensions = span.extensions();
    let stored = extensions
        .get::<FormattedFields<AppendJsonFields>>()
        .map_or("", |f| f.fields.as_str());
    let fields = stored
        .trim()
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .map_or("", str::trim);
    writer.write_char('{')?;
    if !fields.is_empty() {
        writer.write_str(fields)?;
        writer.write_char(',')?;
    }
    writer.write_str("\"name\":")?;
    let name = span.metadata().name();
    // Span names are identifiers: quoted as they are, without an allocation.
    if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        write!(writer, "\"{name}\"}}")
    } else {
        writer.write_str(&serde_json::to_string(name).map_err(|_| fmt::Error)?)?;
        writer.write_char('}')
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
            .record("micros", 42u64)
            .record("kind", "DaemonSet")
            .record("object", tracing::field::debug(&["a", "b"]))
            .record("type", -3i64)
            .record("decision", "denied");
        tracing::info!(findings = 0, "review");
    }

    /// The lines written, their timestamps blanked.
    fn lines(buffer: &Buffer) -> String {
        let bytes = buffer.0.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let text = String::from_utf8(bytes).expect("UTF-8");
        text.lines()
            .map(|line| {
                let value = serde_json::from_str::<serde_json::Value>(line).expect("a JSON line");
                let stamp = value["timestamp"].as_str().expect("a timestamp");
                line.replacen(stamp, "T", 1) + "\n"
            })
            .collect()
    }

    /// Logs with the library's JSON format and with tailguard's; returns both.
    fn both(log: fn()) -> (String, String) {
        let (library, ours) = (Buffer::default(), Buffer::default());
        let subscriber = tracing_subscriber::fmt().json().with_writer(library.clone()).finish();
        tracing::subscriber::with_default(subscriber, log);
        let subscriber = tracing_subscriber::fmt()
            .json()
            .fmt_fields(AppendJsonFields)
            .event_format(JsonEvents::default())
            .with_writer(ours.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, log);
        (lines(&library), lines(&ours))
    }

    #[test]
    fn lines_hold_what_the_librarys_hold() {
        let (library, ours) = both(log);
        // The same values; span fields recorded after the span was created
        // come in the order they were recorded, not sorted by name.
        let line = serde_json::from_str::<serde_json::Value>(&ours).expect("one line");
        assert_eq!(
            line,
            serde_json::from_str::<serde_json::Value>(&library).expect("one line")
        );
        assert_ne!(ours, library, "the order of span fields differs");
        let span = &line["span"];
        assert_eq!(span["name"], "review", "{line}");
        assert_eq!(span["uid"], "u-\"quoted\"\n", "{line}");
        assert_eq!(span["decision"], "denied", "{line}");
        assert_eq!(span["micros"], 42, "{line}");
        assert_eq!(span["object"], "[\"a\", \"b\"]", "{line}");
        assert_eq!(span["type"], -3, "{line}");
        assert_eq!(line["spans"][0]["protocol"], "h2", "{line}");
        assert_eq!(line["spans"][1]["name"], "review", "{line}");
    }

    /// Byte for byte: outside any span, in a span without fields, with an
    /// explicit parent that is not the current span, a field set twice.
    #[test]
    fn lines_without_spans_and_with_other_parents_too() {
        let (library, ours) = both(|| {
            tracing::warn!(error = "e", "outside");
            let bare = tracing::info_span!("bare");
            let _b = bare.enter();
            tracing::info!("in a bare span");
            let other = tracing::info_span!(parent: None, "other", n = 1);
            tracing::info!(parent: &other, "explicit parent");
            // A field set twice: the later value, the fields written again by name.
            let twice = tracing::info_span!("twice", a = Empty, b = Empty);
            twice.record("b", 1).record("a", 2).record("b", 3);
            tracing::info!(parent: &twice, "recorded twice");
            // A span name that needs quoting.
            let odd = tracing::info_span!("odd \"name\"", n = 2);
            tracing::info!(parent: &odd, "odd name");
        });
        assert_eq!(ours.lines().count(), 5);
        assert!(ours.contains(r#""name":"odd \"name\"""#), "{ours}");
        assert!(ours.contains(r#""span":{"a":2,"b":3,"name":"twice"}"#), "{ours}");
        assert_eq!(ours, library);
    }
}
