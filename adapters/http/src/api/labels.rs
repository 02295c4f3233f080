//! Labels for metrics and logs: the request id, the route template of a path, and bounded
//! labels for paths no route serves.

use poem::Request;
use std::sync::Mutex;

/// The client's `x-request-id` when it is a plausible id (1–64 visible ASCII characters),
/// else a fresh ULID. Echoed on the response and logged with every error.
pub(super) fn request_id(req: &Request) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| ulid::Ulid::generate().to_string(), str::to_owned)
}

/// How many distinct unmatched-path labels `/metrics` keeps before folding the rest into
/// `unmatched:other`.
const UNMATCHED_LABELS: usize = 32;

/// Bounded metric labels for paths no route serves, so an operator can see *which* missing
/// route clients call (`unmatched:/v1/completions`) without a client being able to grow the
/// label set: at most three segments, id-like segments (see [`is_plain_segment`]) replaced
/// by `{id}`, and at most [`UNMATCHED_LABELS`] distinct labels.
#[derive(Default)]
pub(super) struct UnmatchedRoutes {
    seen: Mutex<Vec<&'static str>>,
}

/// Whether a path segment is kept as is in an unmatched-route label: a lower-case word
/// (`completions`, `batch_jobs`) or an API version tag (`v1`, `v1beta`: every provider path
/// starts with one, and the label must name the route a client missed). Anything else (ids,
/// numbers, mixed case, more than 24 characters) becomes `{id}`.
fn is_plain_segment(seg: &str) -> bool {
    let word = seg
        .bytes()
        .all(|b| b.is_ascii_lowercase() || matches!(b, b'_' | b'-' | b'.'));
    let version = seg.strip_prefix('v').is_some_and(|rest| {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        (1..=2).contains(&digits) && rest[digits..].bytes().all(|b| b.is_ascii_lowercase())
    });
    seg.len() <= 24 && (word || version)
}

impl UnmatchedRoutes {
    pub(super) fn label(&self, path: &str) -> &'static str {
        let mut shape = String::from("unmatched:");
        for seg in path.split('/').filter(|s| !s.is_empty()).take(3) {
            shape.push('/');
            shape.push_str(if is_plain_segment(seg) { seg } else { "{id}" });
        }
        if shape.len() == "unmatched:".len() {
            shape.push('/');
        }
        let mut seen = match self.seen.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(l) = seen.iter().find(|l| **l == shape) {
            return l;
        }
        if seen.len() >= UNMATCHED_LABELS {
            return "unmatched:other";
        }
        // Leaked once per distinct label, at most UNMATCHED_LABELS times per process.
        let label: &'static str = Box::leak(shape.into_boxed_str());
        seen.push(label);
        label
    }
}

/// The route template and inbound shape of a path, for metric labels (bounded cardinality:
/// ids never become labels; unknown paths are labelled by [`UnmatchedRoutes`]).
pub(super) fn route_template(path: &str) -> (&'static str, &'static str) {
    match path {
        "/v1/chat/completions" => ("/v1/chat/completions", "openai"),
        "/v1/messages" => ("/v1/messages", "anthropic"),
        "/v1/messages/count_tokens" => ("/v1/messages/count_tokens", "anthropic"),
        "/v1/responses" => ("/v1/responses", "responses"),
        "/v1/responses/input_tokens" => ("/v1/responses/input_tokens", "responses"),
        "/v1/embeddings" => ("/v1/embeddings", "openai"),
        "/v1/models" => ("/v1/models", "openai"),
        p if p.starts_with("/v1/models/") => ("/v1/models/{model_id}", "openai"),
        "/healthz" => ("/healthz", "none"),
        "/readyz" => ("/readyz", "none"),
        "/metrics" => ("/metrics", "none"),
        "/openapi.json" => ("/openapi.json", "none"),
        "/admin/v1/keys" => ("/admin/v1/keys", "admin"),
        "/admin/v1/usage" => ("/admin/v1/usage", "admin"),
        "/admin/v1/audit" => ("/admin/v1/audit", "admin"),
        "/admin/v1/overview" => ("/admin/v1/overview", "admin"),
        "/admin/v1/usage/series" => ("/admin/v1/usage/series", "admin"),
        "/admin/v1/audit/verify" => ("/admin/v1/audit/verify", "admin"),
        "/admin/v1/audit/export" => ("/admin/v1/audit/export", "admin"),
        "/admin/v1/sessions" => ("/admin/v1/sessions", "admin"),
        p if p.starts_with("/admin/v1/sessions/") => ("/admin/v1/sessions/{session_id}", "admin"),
        p if p.starts_with("/admin/v1/keys/") && p.ends_with("/revoke") => {
            ("/admin/v1/keys/{key_id}/revoke", "admin")
        }
        p if p.starts_with("/admin/v1/keys/") && p.ends_with("/rotate") => {
            ("/admin/v1/keys/{key_id}/rotate", "admin")
        }
        p if p.starts_with("/admin/v1/keys/") => ("/admin/v1/keys/{key_id}", "admin"),
        p if p.starts_with("/docs") => ("/docs", "none"),
        p if p == "/ui" || p.starts_with("/ui/") => ("/ui", "none"),
        _ => ("other", "none"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmatched_labels_keep_routes_and_fold_ids() {
        let routes = UnmatchedRoutes::default();
        assert_eq!(routes.label("/v1/completions"), "unmatched:/v1/completions");
        assert_eq!(
            routes.label("/v1beta/models/gemini-pro"),
            "unmatched:/v1beta/models/gemini-pro"
        );
        assert_eq!(
            routes.label("/v1/files/file-AbC123/content"),
            "unmatched:/v1/files/{id}"
        );
        assert_eq!(
            routes.label("/v1/threads/123"),
            "unmatched:/v1/threads/{id}"
        );
        assert_eq!(routes.label("/v123/x"), "unmatched:/{id}/x");
        assert_eq!(routes.label("/"), "unmatched:/");
        for i in 0..UNMATCHED_LABELS {
            let word: String = [i / 26, i % 26]
                .iter()
                .map(|n| char::from(b'a' + *n as u8))
                .collect();
            let _ = routes.label(&format!("/probe/{word}"));
        }
        assert_eq!(routes.label("/one/more"), "unmatched:other");
        assert_eq!(routes.label("/v1/completions"), "unmatched:/v1/completions");
    }
}
