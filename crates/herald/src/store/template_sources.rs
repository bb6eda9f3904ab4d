//! The store as the templates' source: a render asks it, by name, for the templates a template extends
//! or includes (the templates module defines what it needs and imports nothing from the store).

use super::{Store, StoreError};
use crate::templates::{TemplateSource, TemplateSources};

impl TemplateSources for Store {
    type Error = StoreError;

    async fn template_source(&self, name: &str) -> Result<Option<TemplateSource>, StoreError> {
        Ok(self.template(name).await?.map(|stored| stored.source))
    }
}
