//! Stored templates on PostgreSQL.

use super::PgStore;
use crate::store::{StoreError, StoredTemplate, TemplateSource, rows};

impl PgStore {
    pub async fn put_template(
        &self,
        template: &TemplateSource,
        unsubscribe_list: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO templates (name, subject, text, html, updated_at, unsubscribe_list)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (name) DO UPDATE SET subject = EXCLUDED.subject, text = EXCLUDED.text,
             html = EXCLUDED.html, updated_at = EXCLUDED.updated_at,
             unsubscribe_list = EXCLUDED.unsubscribe_list",
        )
        .bind(&template.name)
        .bind(&template.subject)
        .bind(&template.text)
        .bind(&template.html)
        .bind(self.clock.now())
        .bind(unsubscribe_list)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn template(&self, name: &str) -> Result<Option<StoredTemplate>, StoreError> {
        let row = sqlx::query(
            "SELECT name, subject, text, html, updated_at, unsubscribe_list FROM templates WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(rows::template))
    }

    pub async fn templates(&self) -> Result<Vec<StoredTemplate>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, subject, text, html, updated_at, unsubscribe_list FROM templates ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(rows::template).collect())
    }

    pub async fn delete_template(&self, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM templates WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}
