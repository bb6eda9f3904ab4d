//! Rendering without storing: a stored template with given data (the API's preview, and the first step of a
//! templated message), and an unsaved draft (the dashboard editor's live preview).

use std::sync::Arc;

use serde_json::Value;

use super::{Service, SubmitError};
use crate::{
    store::{StoreError, TemplateSource},
    templates::{self, LoadError, Rendered, TemplateSet},
};

impl Service {
    /// Renders the stored template `name` with `data` (fetching the templates it extends or includes). Errors
    /// in the data are reported on `field`.
    pub async fn render(
        &self,
        name: &str,
        data: &Value,
        field: &str,
    ) -> Result<Rendered, SubmitError> {
        let set = TemplateSet::load(&self.store, name, self.limits.template.clone())
            .await
            .map_err(|e| SubmitError::from_load(e, field))?;
        templates::render_loading(&mut Arc::new(set), &self.renderer, &self.store, data)
            .await
            .map_err(|e| SubmitError::from_load(e, field))
    }

    /// Renders a stored template already read (`source`) with `data`, fetching the templates it extends or
    /// includes: a message reads its template first, for the template's unsubscribe.
    pub(super) async fn render_stored(
        &self,
        source: TemplateSource,
        data: &Value,
        field: &str,
    ) -> Result<Rendered, SubmitError> {
        let set = TemplateSet::from_root(source, self.limits.template.clone());
        templates::render_loading(&mut Arc::new(set), &self.renderer, &self.store, data)
            .await
            .map_err(|e| SubmitError::from_load(e, field))
    }

    /// Renders an unsaved draft with sample `data`, exactly as a message would carry it: its parts are
    /// compiled first, and the stored templates it extends or includes are fetched.
    pub async fn preview_draft(
        &self,
        source: TemplateSource,
        data: &Value,
    ) -> Result<Rendered, LoadError<StoreError>> {
        let limits = self.limits.template.clone();
        templates::check_source(&self.renderer, &source, &limits).await?;
        let mut set = Arc::new(TemplateSet::from_root(source, limits));
        templates::render_loading(&mut set, &self.renderer, &self.store, data).await
    }
}
