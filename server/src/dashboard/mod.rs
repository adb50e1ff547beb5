//! The web dashboard, embedded in the binary so the server needs no files beside it.

use axum::response::Html;

/// `GET /`: the fleet overview page (it fetches `/api/v1/hosts` and refreshes itself).
pub async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
