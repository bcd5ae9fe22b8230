//! The baseline: per request, the work kube-rs's `examples/admission_controller.rs`
//! (the reference Rust admission webhook) does, written here independently.
//!
//! axum's `Json<AdmissionReview<DynamicObject>>` extractor decodes the body
//! (with its error-path tracking); `AdmissionRequest::try_from`;
//! `AdmissionResponse::from(&req)`; a request whose object has an `illegal`
//! label is denied; one without the `admission` label gets it through a JSON
//! Patch built directly (an `add` of `/metadata/labels` first when the object
//! has no labels, then an `add` of the label); `with_patch`; `into_review`;
//! `Json` encodes the answer. The patch is as kube-core serializes it (a JSON
//! array of byte values). The example also logs one line per request at info;
//! this one does not (tailguard's server does, so that favours the baseline).

use axum::Json;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

/// The label the example adds, and its value.
const LABEL: &str = "admission";
const VALUE: &str = "modified-by-admission-controller";

/// The handler's logic, shared by the served handler and the in-process loop.
pub fn decide(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let mut response = AdmissionResponse::from(&request);
    if let Some(object) = &request.object {
        response = match label(response.clone(), object) {
            Ok(r) => r,
            Err(reason) => response.deny(reason),
        };
    }
    response.into_review()
}

/// Denies `illegal`, adds the label with explicit `add` operations.
fn label(response: AdmissionResponse, object: &DynamicObject) -> Result<AdmissionResponse, String> {
    let labels = object.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key("illegal")) {
        return Err("Resource contained 'illegal' label".to_owned());
    }
    if labels.is_some_and(|l| l.contains_key(LABEL)) {
        return Ok(response);
    }
    let mut ops = Vec::with_capacity(2);
    if labels.is_none() {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "labels"]),
            value: serde_json::json!({}),
        }));
    }
    ops.push(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(["metadata", "labels", LABEL]),
        value: serde_json::Value::String(VALUE.to_owned()),
    }));
    response.with_patch(Patch(ops)).map_err(|e| e.to_string())
}

/// What one request costs without the network: axum's `Json` decoding, the
/// handler, and serializing the response (as `Json` does).
pub fn in_process(body: &[u8]) -> Vec<u8> {
    match Json::<AdmissionReview<DynamicObject>>::from_bytes(body) {
        Ok(Json(review)) => serde_json::to_vec(&decide(review)).unwrap_or_default(),
        Err(e) => e.body_text().into_bytes(),
    }
}

pub async fn handler(Json(review): Json<AdmissionReview<DynamicObject>>) -> Json<AdmissionReview<DynamicObject>> {
    Json(decide(review))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(&in_process(body)).expect("JSON answer")
    }

    /// The patch as kube-core encodes it: a JSON array of bytes.
    fn patch(answer: &serde_json::Value) -> serde_json::Value {
        let bytes: Vec<u8> = serde_json::from_value(answer["response"]["patch"].clone()).expect("byte array");
        serde_json::from_slice(&bytes).expect("JSON patch")
    }

    #[test]
    fn adds_the_label_with_one_add_when_labels_exist() {
        for case in crate::bodies::cases() {
            let a = answer(&case.body);
            assert_eq!(a["response"]["allowed"], true, "{}", case.name);
            assert_eq!(a["response"]["uid"], crate::bodies::UID, "{}", case.name);
            assert_eq!(
                patch(&a),
                serde_json::json!([{"op": "add", "path": "/metadata/labels/admission", "value": VALUE}]),
                "{}",
                case.name
            );
        }
    }

    #[test]
    fn creates_labels_first_and_denies_illegal() {
        let review = |labels: serde_json::Value| {
            let mut object = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
            if !labels.is_null() {
                object["metadata"]["labels"] = labels;
            }
            serde_json::to_vec(&serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {
                    "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "ConfigMap"},
                    "resource": {"group": "", "version": "v1", "resource": "configmaps"},
                    "operation": "CREATE", "userInfo": {}, "object": object
                }
            }))
            .expect("serializable")
        };
        let a = answer(&review(serde_json::Value::Null));
        assert_eq!(
            patch(&a)[0],
            serde_json::json!({"op": "add", "path": "/metadata/labels", "value": {}})
        );
        assert_eq!(patch(&a).as_array().map(Vec::len), Some(2));
        let a = answer(&review(serde_json::json!({"illegal": "yes"})));
        assert_eq!(a["response"]["allowed"], false);
        let a = answer(&review(serde_json::json!({"admission": "done"})));
        assert_eq!(a["response"]["allowed"], true);
        assert!(a["response"].get("patch").is_none());
    }
}
