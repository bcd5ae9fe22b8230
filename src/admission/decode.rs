//! Reading an AdmissionReview: only what the rules read is built
//! (`userInfo`, `managedFields`, `status` and unknown fields are skipped by
//! the parser), in one pass over the body: the workload is decoded while the
//! request is read, typed by the request's `kind`, which the apiserver sends
//! before `object`. Anything unusual (fields in another order, a spec
//! tailguard cannot read, nesting deeper than the parser's limit) is read
//! again the way it always was: every part held raw and decoded on its own,
//! which gives the same verdict and error messages it always gave.

use std::fmt;
use std::marker::PhantomData;

use kube::core::admission::Operation;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use super::{API_VERSION, KIND, ReviewError};
use crate::workload::{Meta, Workload, WorkloadKind};

/// How the request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    /// Decode the workload while reading the request, else fall back to `Raw`.
    OnePass,
    /// Hold every part raw and decode each on its own (the reference).
    Raw,
}

/// The request, as far as tailguard reads it.
pub struct RequestIn<'a> {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub operation: Operation,
    pub sub_resource: Option<String>,
    pub object: Option<ObjectIn<'a>>,
    /// Read only on UPDATE, to tell new violations from ones already there.
    pub old_object: Option<&'a RawValue>,
}

#[derive(Deserialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub kind: String,
}

/// The request's object.
pub enum ObjectIn<'a> {
    /// Decoded in the one pass (names not yet filled in from the request).
    Read(Box<Workload>),
    Raw(&'a RawValue),
}

/// An object held raw, for `Parse::Raw` and the old object.
#[derive(Deserialize)]
pub struct RawObject<'a> {
    #[serde(default)]
    pub metadata: Option<Meta>,
    #[serde(borrow, default)]
    pub spec: Option<&'a RawValue>,
}

/// API groups of the kinds tailguard reads.
pub fn reads_group(group: &str) -> bool {
    matches!(group, "" | "apps" | "batch")
}

/// Reads the review's request, checking the review's version and uid.
pub fn request(body: &[u8], parse: Parse) -> Result<RequestIn<'_>, ReviewError> {
    if parse == Parse::OnePass
        && let Ok(review) = ReviewSeed.deserialize(&mut serde_json::Deserializer::from_slice(body))
    {
        return checked(review);
    }
    let raw: RawReview<'_> = serde_json::from_slice(body)?;
    let review = Review {
        api_version: raw.api_version,
        kind: raw.kind,
        request: None,
    };
    // The version first, so a foreign review gets that error, not its request's.
    if review.api_version != API_VERSION || review.kind != KIND {
        return checked(review);
    }
    let request = match raw.request {
        Some(raw) => Some(serde_json::from_str::<RawRequest<'_>>(raw.get())?.into()),
        None => None,
    };
    checked(Review { request, ..review })
}

// --- the raw reading: every part held raw, decoded on its own ---

#[derive(Deserialize)]
struct RawReview<'a> {
    #[serde(rename = "apiVersion", default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest<'a> {
    #[serde(default)]
    uid: String,
    kind: GroupVersionKind,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    name: Option<String>,
    operation: Operation,
    #[serde(default)]
    sub_resource: Option<String>,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(borrow, default)]
    old_object: Option<&'a RawValue>,
}

impl<'a> From<RawRequest<'a>> for RequestIn<'a> {
    fn from(r: RawRequest<'a>) -> RequestIn<'a> {
        RequestIn {
            uid: r.uid,
            kind: r.kind,
            namespace: r.namespace,
            name: r.name,
            operation: r.operation,
            sub_resource: r.sub_resource,
            object: r.object.map(ObjectIn::Raw),
            old_object: r.old_object,
        }
    }
}

// --- the one pass: stricter than the raw reading (any surprise is an error,
// and the raw reading then has the last word) ---

struct Review<'a> {
    api_version: String,
    kind: String,
    request: Option<RequestIn<'a>>,
}

fn checked(review: Review<'_>) -> Result<RequestIn<'_>, ReviewError> {
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::Version {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    if request.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }
    Ok(request)
}

/// Fails on a key seen twice, as serde's derived readers do.
fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
    key: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(key));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

struct ReviewSeed;

impl<'de> DeserializeSeed<'de> for ReviewSeed {
    type Value = Review<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Review<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ReviewSeed {
    type Value = Review<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AdmissionReview")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Review<'de>, A::Error> {
        let (mut api_version, mut kind): (Option<String>, Option<String>) = (None, None);
        let mut request: Option<Option<RequestIn<'de>>> = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "apiVersion" => once(&mut api_version, &mut map, "apiVersion")?,
                "kind" => once(&mut kind, &mut map, "kind")?,
                "request" => {
                    if request.is_some() {
                        return Err(de::Error::duplicate_field("request"));
                    }
                    request = Some(map.next_value_seed(OptionSeed(RequestSeed))?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Review {
            api_version: api_version.unwrap_or_default(),
            kind: kind.unwrap_or_default(),
            request: request.flatten(),
        })
    }
}

/// `null` as `None`, anything else through the inner seed.
struct OptionSeed<S>(S);

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for OptionSeed<S> {
    type Value = Option<S::Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de, S: DeserializeSeed<'de>> Visitor<'de> for OptionSeed<S> {
    type Value = Option<S::Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an optional value")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(d).map(Some)
    }
}

struct RequestSeed;

impl<'de> DeserializeSeed<'de> for RequestSeed {
    type Value = RequestIn<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<RequestIn<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RequestSeed {
    type Value = RequestIn<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an AdmissionRequest")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RequestIn<'de>, A::Error> {
        let mut uid: Option<String> = None;
        let mut kind: Option<GroupVersionKind> = None;
        let (mut namespace, mut name, mut sub_resource): (Option<Option<String>>, _, Option<Option<String>>) =
            (None, None::<Option<String>>, None);
        let mut operation: Option<Operation> = None;
        let mut object: Option<Option<ObjectIn<'de>>> = None;
        let mut old_object: Option<Option<&'de RawValue>> = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "uid" => once(&mut uid, &mut map, "uid")?,
                "kind" => once(&mut kind, &mut map, "kind")?,
                "namespace" => once(&mut namespace, &mut map, "namespace")?,
                "name" => once(&mut name, &mut map, "name")?,
                "operation" => once(&mut operation, &mut map, "operation")?,
                "subResource" => once(&mut sub_resource, &mut map, "subResource")?,
                "oldObject" => once(&mut old_object, &mut map, "oldObject")?,
                "object" => {
                    if object.is_some() {
                        return Err(de::Error::duplicate_field("object"));
                    }
                    // Typed now only when the kind came first and is one
                    // tailguard reads; otherwise held raw.
                    let typed = match &kind {
                        Some(k) if reads_group(&k.group) => WorkloadKind::from_kind(&k.kind),
                        _ => None,
                    };
                    object = Some(match typed {
                        Some(kind) => map
                            .next_value_seed(OptionSeed(ObjectSeed(kind)))?
                            .map(|w| ObjectIn::Read(Box::new(w))),
                        None => map.next_value::<Option<&'de RawValue>>()?.map(ObjectIn::Raw),
                    });
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(RequestIn {
            uid: uid.unwrap_or_default(),
            kind: kind.ok_or_else(|| de::Error::missing_field("kind"))?,
            namespace: namespace.flatten(),
            name: name.flatten(),
            operation: operation.ok_or_else(|| de::Error::missing_field("operation"))?,
            sub_resource: sub_resource.flatten(),
            object: object.flatten(),
            old_object: old_object.flatten(),
        })
    }
}

/// A workload object of a known kind: `metadata` and `spec` decoded as they
/// are read. A missing or null `spec` is an error here (the raw reading
/// reports it).
struct ObjectSeed(WorkloadKind);

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Workload;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Workload, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed {
    type Value = Workload;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {}", self.0)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Workload, A::Error> {
        let mut metadata: Option<Option<Meta>> = None;
        let mut workload: Option<Workload> = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "metadata" => once(&mut metadata, &mut map, "metadata")?,
                "spec" => {
                    if workload.is_some() {
                        return Err(de::Error::duplicate_field("spec"));
                    }
                    workload = Some(map.next_value_seed(SpecSeed(self.0, PhantomData))?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let mut workload = workload.ok_or_else(|| de::Error::missing_field("spec"))?;
        workload.meta = metadata.flatten().unwrap_or_default();
        Ok(workload)
    }
}

/// The spec of a workload of a known kind (metadata is set by the caller).
struct SpecSeed<'a>(WorkloadKind, PhantomData<&'a ()>);

impl<'de> DeserializeSeed<'de> for SpecSeed<'_> {
    type Value = Workload;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Workload, D::Error> {
        Workload::decode(self.0, Meta::default(), d).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NoCluster, reference, validate};
    use crate::config::Config;

    const DS: &str = r#"{"apiVersion":"apps/v1","kind":"DaemonSet","metadata":{"name":"ts","namespace":"net","managedFields":[{"manager":"kubectl"}]},"spec":{"template":{"metadata":{"labels":{"app":"ts"}},"spec":{"hostNetwork":true,"containers":[{"name":"ts","image":"tailscale/tailscale:v1.96.4","env":[{"name":"TS_USERSPACE","value":"false"},{"name":"TS_AUTHKEY","value":"tskey-auth-abc"}]}]}}},"status":{"numberReady":0}}"#;

    fn review(request: &str) -> Vec<u8> {
        format!(r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{request}}}"#).into_bytes()
    }

    /// Both readings give the same answer, byte for byte, and tell whether
    /// the one pass decoded the object itself.
    fn same(body: &[u8]) -> bool {
        let config = Config::default();
        let one = validate(body, &config, &NoCluster);
        let raw = reference::validate(body, &config, &NoCluster);
        match (&one, &raw) {
            (Ok(a), Ok(b)) => assert_eq!(a.body, b.body, "{}", String::from_utf8_lossy(body)),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
            _ => panic!("one pass {one:?} vs raw {raw:?}"),
        }
        matches!(
            super::request(body, super::Parse::OnePass).ok().and_then(|r| r.object),
            Some(super::ObjectIn::Read(_))
        )
    }

    #[test]
    fn one_pass_and_raw_readings_agree() {
        let kind = r#""kind":{"group":"apps","version":"v1","kind":"DaemonSet"}"#;
        let op = r#""operation":"CREATE""#;
        // As the apiserver sends it: decoded in the one pass.
        assert!(same(&review(&format!(
            r#"{{"uid":"1",{kind},{op},"userInfo":{{"username":"u"}},"object":{DS}}}"#
        ))));
        // The object before the kind: held raw, same answer.
        assert!(!same(&review(&format!(r#"{{"uid":"1","object":{DS},{kind},{op}}}"#))));
        // Surprises the one pass leaves to the raw reading.
        for request in [
            format!(r#"{{"uid":"1",{kind},{op},"object":{{"metadata":{{}},"spec":null}}}}"#),
            format!(r#"{{"uid":"1",{kind},{op},"object":{{"metadata":{{}}}}}}"#),
            format!(r#"{{"uid":"1",{kind},{op},"object":{{"spec":{{"template":{{"spec":{{"containers":7}}}}}}}}}}"#),
            format!(r#"{{"uid":"1",{kind},{op},"obj\u0065ct":{DS}}}"#),
            format!(r#"{{"uid":"1",{kind},{op},"object":{DS},"object":{DS}}}"#),
            format!(r#"{{"uid":null,{kind},{op},"object":{DS}}}"#),
            format!(r#"{{"uid":"",{kind},{op},"object":{DS}}}"#),
            format!(r#"{{"uid":"1",{kind},"object":{DS}}}"#),
            format!(r#"{{"uid":"1",{kind},"operation":"DELETE","object":{{"spec":7}}}}"#),
            format!(
                r#"{{"uid":"1","kind":{{"group":"","version":"v1","kind":"ConfigMap"}},{op},"object":{{"data":{{}}}}}}"#
            ),
        ] {
            assert!(!same(&review(&request)), "{request}");
        }
        for body in [
            b"{}".to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":7}}"#.to_vec(),
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":null}"#.to_vec(),
            b"[1,2]".to_vec(),
        ] {
            same(&body);
        }
        // Nested beyond the parser's depth limit inside the spec, where only
        // the raw reading (a parser per part) gets through.
        let deep = format!("{}1{}", "[".repeat(120), "]".repeat(120));
        let nested = DS.replace(r#""status":{"numberReady":0}"#, r#""x":0"#).replace(
            r#""hostNetwork":true"#,
            &format!(r#""hostNetwork":true,"overhead":{{"d":{deep}}}"#),
        );
        same(&review(&format!(r#"{{"uid":"1",{kind},{op},"object":{nested}}}"#)));
    }
}
