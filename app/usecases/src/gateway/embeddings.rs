//! `POST /v1/embeddings` (OpenAI shape) to an OpenAI-compatible upstream or the mock: the
//! same pipeline as a model call — routed, allow-listed, reserved against the key's caps,
//! priced on the upstream's `usage.prompt_tokens` (input price; no output), traced as
//! `llm.call_started` / `llm.call_completed` with `inbound_shape: "openai"` — and forwarded
//! with every field the gateway does not read (`dimensions`, `encoding_format`, `user`, …).

use super::GatewayCore;
use super::call::CallSpec;
use bytes::Bytes;
use metis_domain::canonical::StopReason;
use metis_domain::error::{ErrorClass, GatewayError, invalid};
use metis_ports::gateway::Admission;
use metis_ports::upstream::{Operation, UpstreamBody, WireFormat};
use serde_json::{Map, Value};
use std::time::Instant;

impl GatewayCore {
    pub(super) async fn embed(
        &self,
        admission: Admission,
        body: Bytes,
    ) -> Result<Bytes, GatewayError> {
        let started = Instant::now();
        let raw: Map<String, Value> = match serde_json::from_slice(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(invalid("request body must be a JSON object")),
            Err(e) => return Err(invalid(format!("invalid JSON body: {e}"))),
        };
        let model = match raw.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.clone(),
            _ => return Err(invalid("'model' must be a non-empty string")),
        };
        let estimated = estimate_input_tokens(raw.get("input"))?;
        let routed = self.route(&admission, &model, started)?;
        if !routed
            .provider
            .supports(WireFormat::OpenAiChat, Operation::Embeddings)
        {
            return Err(invalid(format!(
                "model '{model}' resolves to provider '{}', which serves no embeddings endpoint",
                routed.entry.provider
            )));
        }
        let upstream_json =
            metis_domain::openai::passthrough_request(raw, &routed.entry.upstream_name);
        let upstream_body =
            serde_json::to_vec(&upstream_json).map_err(|_| GatewayError::Internal)?;
        let mut call = self
            .start_call(
                &admission,
                &routed,
                CallSpec {
                    operation: "embeddings",
                    stream: false,
                    estimated_input_tokens: estimated,
                    max_output_tokens: Some(0),
                    tpm: self.tpm_of(&admission, None),
                    features: None,
                },
            )
            .await?;
        let request = Self::upstream_request(
            &admission,
            call.request_id.clone(),
            call.traceparent.clone(),
            WireFormat::OpenAiChat,
            Operation::Embeddings,
            &routed.entry.upstream_name,
            Bytes::from(upstream_body),
            false,
            true,
        );
        let reply = self
            .send(&*routed.provider, &mut call, request, true)
            .await?;
        let mut recorder = call.recorder;
        let UpstreamBody::Full(bytes) = reply.body else {
            recorder.fail(ErrorClass::Other, "embeddings upstream answered a stream");
            return Err(GatewayError::Internal);
        };
        let mut v: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                let message = format!(
                    "upstream {} returned a body the gateway could not parse",
                    routed.entry.provider
                );
                recorder.fail(ErrorClass::Other, &message);
                return Err(GatewayError::Upstream {
                    class: ErrorClass::Network,
                    provider: routed.entry.provider.clone(),
                    message,
                    retry_after_secs: None,
                });
            }
        };
        match v.pointer("/usage/prompt_tokens").and_then(Value::as_u64) {
            Some(n) => recorder.usage.input_tokens = n,
            None => {
                recorder.usage.input_tokens = estimated;
                recorder.usage_estimated = true;
            }
        }
        recorder.stop_reason = Some(StopReason::EndTurn);
        if let Some(o) = v.as_object_mut() {
            o.insert("model".to_owned(), Value::String(model));
        }
        let out = serde_json::to_vec(&v).map_err(|_| GatewayError::Internal)?;
        recorder.complete();
        Ok(Bytes::from(out))
    }
}

/// The reservation's input estimate: characters / 4 of each string input, or the length of
/// each token array.
fn estimate_input_tokens(input: Option<&Value>) -> Result<u64, GatewayError> {
    let bad =
        || invalid("'input' must be a string, an array of strings, or an array of token arrays");
    let chars = |s: &str| (s.chars().count() as u64).div_ceil(4).max(1);
    match input {
        Some(Value::String(s)) => Ok(chars(s)),
        Some(Value::Array(items)) if !items.is_empty() => {
            if items.iter().all(Value::is_u64) {
                return Ok(items.len() as u64);
            }
            items.iter().try_fold(0u64, |n, item| match item {
                Value::String(s) => Ok(n + chars(s)),
                Value::Array(tokens) if tokens.iter().all(Value::is_u64) => {
                    Ok(n + tokens.len() as u64)
                }
                _ => Err(bad()),
            })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inputs_are_estimated_or_refused_by_name() {
        assert_eq!(estimate_input_tokens(Some(&json!("abcdefgh"))).unwrap(), 2);
        assert_eq!(
            estimate_input_tokens(Some(&json!(["abcd", "e"]))).unwrap(),
            2
        );
        assert_eq!(estimate_input_tokens(Some(&json!([1, 2, 3]))).unwrap(), 3);
        assert_eq!(
            estimate_input_tokens(Some(&json!([[1, 2], [3]]))).unwrap(),
            3
        );
        for bad in [json!(null), json!([]), json!([{"a": 1}]), json!(5)] {
            let e = estimate_input_tokens(Some(&bad)).unwrap_err();
            assert!(e.message().contains("'input'"), "{bad}");
        }
        assert!(estimate_input_tokens(None).is_err());
    }
}
