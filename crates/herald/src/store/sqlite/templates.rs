//! Stored templates on SQLite.

use super::SqliteStore;
use crate::store::{StoreError, StoredTemplate, TemplateSource, rows};

impl SqliteStore {
    pub async fn put_template(
        &self,
        template: &TemplateSource,
        unsubscribe_list: Option<&str>,
    ) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO templates (name, subject, text, html, updated_at, unsubscribe_list)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (name) DO UPDATE SET subject = excluded.subject, text = excluded.text,
             html = excluded.html, updated_at = excluded.updated_at,
             unsubscribe_list = excluded.unsubscribe_list",
            vec![
                template.name.as_str().into(),
                template.subject.as_str().into(),
                template.text.as_deref().into(),
                template.html.as_deref().into(),
                self.clock.now().into(),
                unsubscribe_list.into(),
            ],
        )
        .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
        let row = sqlx::query(
            "SELECT name, subject, text, html, updated_at, unsubscribe_list FROM templates WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.as_ref().map(rows::template))
    }

    pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, subject, text, html, updated_at, unsubscribe_list FROM templates ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(rows.iter().map(rows::template).collect())
    }

    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .execute("DELETE FROM templates WHERE name = ?1", vec![name.into()])
            .await?
            > 0)
    }
}
