//! A naive webhook that diffs whole objects: it decodes the review as the
//! baseline does (axum's `Json<AdmissionReview<DynamicObject>>`), adds one
//! label to a copy of the object, serializes both copies to `serde_json::Value`
//! and diffs them with `json_patch::diff`, then answers
//! `AdmissionResponse::with_patch(..).into_review()`. This was the benchmark's
//! baseline before issue 15; kube-rs's example builds its patch directly (see
//! [`super::kube_rs`]). Loaded over the wire only with `--compare ...,diff`.

use axum::Json;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};

const LABEL: &str = "naive.example.com/reviewed";

/// The handler's logic, shared by the served handler and the in-process loop.
pub fn decide(review: AdmissionReview<DynamicObject>) -> AdmissionReview<DynamicObject> {
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let response = AdmissionResponse::from(&request);
    let Some(object) = &request.object else {
        return response.into_review();
    };
    let before = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let mut labelled = object.clone();
    labelled
        .metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(LABEL.to_owned(), "true".to_owned());
    let after = match serde_json::to_value(&labelled) {
        Ok(v) => v,
        Err(e) => return AdmissionResponse::invalid(e.to_string()).into_review(),
    };
    let patch = json_patch::diff(&before, &after);
    match response.with_patch(patch) {
        Ok(r) => r.into_review(),
        Err(e) => AdmissionResponse::invalid(e.to_string()).into_review(),
    }
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
