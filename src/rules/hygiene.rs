//! Hygiene warnings: `image-tag` and `resources`.

use super::{Context, Findings, RuleId};
use crate::image::image_tag;

pub fn check(cx: &Context<'_>, out: &mut Findings<'_>) {
    for tc in &cx.containers {
        let c = tc.container;
        let image = c.image.as_deref().unwrap_or_default();
        let pinned_by_digest = image.contains('@');
        match image_tag(image) {
            _ if pinned_by_digest => {}
            None | Some("latest") => out.report(
                RuleId::ImageTag,
                format!("{}.image", tc.path),
                format!("`{image}` floats with `latest`: nodes run different Tailscale versions depending on when they pulled, and an upgrade happens on any restart"),
                "pin a version, e.g. tailscale/tailscale:v1.96.4 (or a digest)",
            ),
            Some(_) => {}
        }
        let has_limits = c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_some_and(|l| !l.is_empty());
        if !has_limits {
            out.report(
                RuleId::Resources,
                format!("{}.resources.limits", tc.path),
                format!("container `{}` has no resource limits: a leak or traffic burst in tailscaled can starve the node it routes for", tc.name()),
                "set resources.limits (e.g. memory: 256Mi) and requests",
            );
        }
    }
}
