//! Herald's message model and MIME writer.
