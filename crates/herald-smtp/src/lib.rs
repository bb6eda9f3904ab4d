//! Herald's async SMTP client.
