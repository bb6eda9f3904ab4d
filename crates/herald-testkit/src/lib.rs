//! Test SMTP servers for Herald's tests.
