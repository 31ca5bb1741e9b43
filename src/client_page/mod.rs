//! TEMPORARY stub until the views land.
use crate::core::AppState;
pub fn routes() -> axum::Router<AppState> {
    axum::Router::new()
}
