//! The stored templates: read, list, save (after the same check a message's render would pass) and delete.

use super::Service;
use crate::{
    store::{StoreError, StoredTemplate, TemplateSource},
    templates::{self, LoadError},
};

impl Service {
    pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
        self.store.template(name).await
    }

    /// Every stored template, by name.
    pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError> {
        self.store.templates().await
    }

    /// Compiles every part and makes a trial render on the render threads ([`templates::check`]), then
    /// stores the template, replacing one of the same name. A template error is returned as
    /// [`LoadError::Template`] and nothing is stored. `unsubscribe_list`: the template's unsubscribe, as
    /// [`Service::template_unsubscribe`] checked it.
    pub async fn save_template(
        &self,
        source: &TemplateSource,
        unsubscribe_list: Option<&str>,
    ) -> Result<(), LoadError<StoreError>> {
        templates::check(&self.renderer, &self.store, source, &self.limits.template).await?;
        self.store
            .put_template(source, unsubscribe_list)
            .await
            .map_err(LoadError::Store)?;
        Ok(())
    }

    /// Whether there was a template `name` to delete.
    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        self.store.delete_template(name).await
    }
}
