//! The Recovery page and its `/api/recovery` twin: what the node lacks (open gaps, a snapshot it
//! waits for, why it could not get one yet), the gaps operators accepted, and the changes held
//! in the quarantine; with the operator's explicit actions: accept the open gaps, apply or
//! discard a quarantined change. The actions need the admin token (a bearer token, or the
//! session cookie with the CSRF token) and a POST, like "take a snapshot now".

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::{WebError, WebState, auth};
use crate::apply::quarantine::Quarantined;
use crate::db::AcceptedGapEntry;
use crate::status::OpenGap;

/// Accepted gaps and quarantined changes shown at most.
const LIST_LIMIT: u64 = 100;

/// What the Recovery page shows.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryView {
    /// Whether the node lacks data it knows of (then it is not ready).
    pub lacks_data: bool,
    pub gaps: Vec<OpenGap>,
    pub waiting_for_snapshot: Option<String>,
    /// Why the last attempt to get a snapshot did not succeed.
    pub blocked: Option<String>,
    pub accepted: Vec<AcceptedGapEntry>,
    pub quarantine: Vec<Quarantined>,
    pub quarantine_held: u64,
}

pub async fn view(state: &WebState) -> Result<RecoveryView, WebError> {
    let facts = state.status().recovery.facts();
    let accepted = state.db(|r| r.accepted_gaps(LIST_LIMIT)).await?;
    let (quarantine, quarantine_held) = state.db(|r| r.quarantined(LIST_LIMIT)).await?;
    Ok(RecoveryView {
        lacks_data: facts.lacks_data(),
        gaps: facts.gaps,
        waiting_for_snapshot: facts.waiting_for_snapshot,
        blocked: facts.blocked,
        accepted,
        quarantine,
        quarantine_held,
    })
}

/// A one-line alert for every page while the node lacks data or holds quarantined changes.
pub fn alert(state: &WebState) -> Option<String> {
    let s = state.status();
    let facts = s.recovery.facts();
    let held = s.quarantine_held();
    let mut parts = Vec::new();
    for g in &facts.gaps {
        parts.push(format!(
            "stream {} misses {}..={} (gap)",
            g.stream, g.first_missing, g.last_missing
        ));
    }
    if let Some(why) = &facts.waiting_for_snapshot {
        parts.push(format!("waiting for a snapshot: {why}"));
    }
    if held > 0 {
        parts.push(format!(
            "{held} changes from the future held in the quarantine"
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    pub csrf: Option<String>,
}

/// `POST /api/recovery/accept` (and the page's form): accept every open gap.
pub async fn accept(
    state: &WebState,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
) -> Result<String, WebError> {
    auth::authorize_action(&state.0.auth, headers, form_csrf)?;
    let handle = maintenance(state)?;
    let n = handle
        .accept_gaps("dashboard")
        .await
        .map_err(WebError::Failed)?;
    Ok(format!("{n} gap(s) accepted and recorded."))
}

/// `POST /api/quarantine/{id}/{apply|discard}` (and the page's forms).
pub async fn release(
    state: &WebState,
    headers: &HeaderMap,
    form_csrf: Option<&str>,
    id: i64,
    action: &str,
) -> Result<String, WebError> {
    auth::authorize_action(&state.0.auth, headers, form_csrf)?;
    let apply = match action {
        "apply" => true,
        "discard" => false,
        _ => return Err(WebError::NotFound),
    };
    let done = maintenance(state)?
        .release_quarantined(id, apply)
        .await
        .map_err(WebError::Failed)?;
    if !done {
        return Err(WebError::NotFound);
    }
    // `/health` and the banner count what is held; the sampler reads it only after applies.
    let (_, held) = state.db(|r| r.quarantined(0)).await?;
    state.status().set_quarantine_held(held);
    Ok(format!(
        "Quarantined change {id} {}.",
        if apply { "applied" } else { "discarded" }
    ))
}

fn maintenance(state: &WebState) -> Result<&crate::maintenance::MaintenanceHandle, WebError> {
    state.maintenance().ok_or(WebError::Unavailable(
        "this node takes no maintenance requests",
    ))
}

pub async fn accept_json(State(state): State<WebState>, headers: HeaderMap) -> Response {
    answer(accept(&state, &headers, None).await)
}

pub async fn release_json(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
) -> Response {
    answer(release(&state, &headers, None, id, &action).await)
}

fn answer(result: Result<String, WebError>) -> Response {
    match result {
        Ok(message) => Json(serde_json::json!({ "message": message })).into_response(),
        Err(e) => e.into_response(),
    }
}
