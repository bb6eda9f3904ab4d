//! Rendering without storing: a stored template with given data (the API's preview, and the first step of a
//! templated message).

use std::sync::Arc;

use serde_json::Value;

use super::{Service, SubmitError};
use crate::templates::{self, Rendered, TemplateSet};

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
}
