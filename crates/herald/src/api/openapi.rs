//! The OpenAPI 3.1 document, written by hand and checked against the live routes by `tests/api.rs`.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn template_error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TemplateError"}}}})
}

pub fn document() -> Value {
    let id_param =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let name_param = json!({"name": "name", "in": "path", "required": true,
        "description": "1 to 128 of A-Z a-z 0-9 _ . - (starting with a letter or digit)",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"}});
    let idempotency_header = json!({"name": "Idempotency-Key", "in": "header", "schema": {"type": "string", "maxLength": 255}});
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {"title": "Herald", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Real-time email notifications: compose, queue durably, deliver over SMTP. \
                    A client that presents 20 wrong bearer tokens within a minute gets 429 (with Retry-After) on every token until the oldest is a minute old. \
                    Without any token (the open mode, loopback only) every route answers only a Host of this server (else 421), and /v1 refuses a browser's cross-site request (403, naming Origin or Sec-Fetch-Site) and a body that is not application/json (415)."},
        "security": [{"bearer": []}],
        "paths": {
            "/v1/messages": {
                "post": {
                    "summary": "Queue one message (answered after it is stored durably)",
                    "parameters": [idempotency_header.clone()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MessageRequest"}}}},
                    "responses": {
                        "202": {"description": "Stored; delivery follows", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}},
                        "400": error_response("Unreadable request"),
                        "401": error_response("Missing or wrong bearer token"),
                        "403": error_response("Open mode: a browser's cross-site request"),
                        "408": error_response("The body did not arrive within HERALD_HTTP_BODY_TIMEOUT"),
                        "413": error_response("Body over the size limit, or the composed message over HERALD_REQUEST_BUDGET (code request_budget, with limit)"),
                        "415": error_response("Open mode: the body is not application/json"),
                        "422": template_error_response("A field is invalid (named in error.field; no text, html or template is an error on text), or the template failed with this data (too complex, too deep, too slow …)"),
                        "429": error_response("Too many wrong bearer tokens from this client"),
                        "503": error_response("The template renderer is busy (code renderer_busy); nothing was stored, try again"),
                    }
                },
                "get": {
                    "summary": "Search the archive, newest first",
                    "parameters": [
                        {"name": "status", "in": "query", "schema": {"$ref": "#/components/schemas/Status"}},
                        {"name": "to", "in": "query", "schema": {"type": "string"}},
                        {"name": "q", "in": "query", "description": "Full text over subject, addresses and text body, in any language: every word must match (whole words, folded; a word inside Chinese, Japanese, Korean or Thai text, even one character; Russian words by stem; the head or tail of a long compound word)", "schema": {"type": "string"}},
                        {"name": "tag", "in": "query", "description": "Exact tag: messages whose tags include it", "schema": {"type": "string"}},
                        {"name": "since", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "until", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["items", "next_cursor"],
                        "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/Summary"}},
                                       "next_cursor": {"type": ["string", "null"]}}}}}},
                                  "400": error_response("A control character in q, to or tag (named in error.field)"),
                                  "422": error_response("A parameter is invalid")}
                }
            },
            "/v1/messages/{id}": {"get": {
                "summary": "One message with its recipients and timeline",
                "parameters": [id_param.clone()],
                "responses": {"200": {"description": "The message", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Message"}}}},
                              "404": error_response("No such message")}
            }},
            "/v1/messages/{id}/raw": {"get": {
                "summary": "The exact bytes sent",
                "parameters": [id_param.clone()],
                "responses": {"200": {"description": "RFC 5322 message", "content": {"message/rfc822": {}}},
                              "404": error_response("No such message"),
                              "410": error_response("Pruned by the retention policy")}
            }},
            "/v1/messages/{id}/cancel": {"post": {
                "summary": "Cancel a message not sent yet",
                "parameters": [id_param],
                "responses": {"200": {"description": "Cancelled"},
                              "404": error_response("No such message"),
                              "409": error_response("Already sending or finished")}
            }},
            "/v1/batches": {"post": {
                "summary": "Queue one message per recipient from one template, in one durable commit",
                "description": "Every recipient's `data` renders the template; attachments are encoded and stored once for the whole batch. Errors name the recipient (`recipients[17].to`, `recipients[17].data`); a bad recipient queues nothing. With an idempotency key, repeating the request returns the same batch_id and ids and queues nothing new.",
                "parameters": [idempotency_header],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchRequest"}}}},
                "responses": {
                    "202": {"description": "Stored; delivery follows", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchAccepted"}}}},
                    "400": error_response("Unreadable request"),
                    "401": error_response("Missing or wrong bearer token"),
                    "403": error_response("Open mode: a browser's cross-site request"),
                    "408": error_response("The body did not arrive within HERALD_HTTP_BODY_TIMEOUT"),
                    "413": error_response("Body over the size limit, or all the batch's messages together over HERALD_REQUEST_BUDGET (code request_budget, with limit); nothing is stored"),
                    "415": error_response("Open mode: the body is not application/json"),
                    "429": error_response("Too many wrong bearer tokens from this client"),
                    "422": template_error_response("A field is invalid, or the template failed for a recipient's data (with template, part, line, column)"),
                    "503": error_response("The template renderer is busy (code renderer_busy); nothing was stored, try again"),
                }
            }},
            "/v1/dkim": {
                "get": {
                    "summary": "The DKIM keys, each with its state (active, retired) and the DNS TXT record to publish",
                    "responses": {"200": {"description": "The keys (public halves only)", "content": {"application/json": {"schema": {
                        "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/DkimKey"}}}}}}}}
                },
                "post": {
                    "summary": "Generate the first key of a signing domain (d=); messages from it, or from its subdomains, are signed from now on",
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DkimKeyRequest"}}}},
                    "responses": {"201": {"description": "Created: publish dns_record at dns_name", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DkimKey"}}}},
                                  "409": error_response("The domain has this selector already, or signs with another key already (rotate instead)"),
                                  "422": error_response("Invalid domain, selector or algorithm (named in error.field)")}
                }
            },
            "/v1/dkim/{domain}/rotate": {"post": {
                "summary": "Rotate: a new key under a new selector signs from now on; the domain's other keys are retired (keep their records published for a few days, then delete them)",
                "parameters": [{"name": "domain", "in": "path", "required": true, "schema": {"type": "string"}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DkimKeyRequest"}}}},
                "responses": {"201": {"description": "Created and active", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/DkimKey"}}}},
                              "409": error_response("The domain has this selector already"),
                              "422": error_response("Invalid domain, selector or algorithm (named in error.field)")}
            }},
            "/v1/dkim/{domain}/{selector}": {"delete": {
                "summary": "Delete a key: mail is no longer signed with it",
                "parameters": [{"name": "domain", "in": "path", "required": true, "schema": {"type": "string"}},
                               {"name": "selector", "in": "path", "required": true, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "Deleted"}, "404": error_response("No such key"),
                              "422": error_response("Invalid domain or selector")}
            }},
            "/v1/templates": {"get": {
                "summary": "List stored templates by name",
                "responses": {"200": {"description": "The templates", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"type": "object", "properties": {
                        "name": {"type": "string"}, "subject": {"type": "string"}, "has_text": {"type": "boolean"},
                        "has_html": {"type": "boolean"}, "updated_at": {"type": "string", "format": "date-time"}}}}}}}}}}
            }},
            "/v1/templates/{name}": {
                "put": {
                    "summary": "Store a template (Jinja syntax), replacing one of the same name",
                    "description": "Each part is compiled first: a syntax error is a 422 naming the part, line and column; a tag with more than 1,000 operators is template_too_complex. Then a trial render without data (missing values empty) refuses a template whose output is too large, nests HTML too deep, inlines too much CSS, runs out of fuel or takes longer than 2 s with any data. Variables are strict (an undefined one is an error naming it); the html part is auto-escaped, subject and text are not. `{% extends \"layout\" %}` and `{% include \"footer\" %}` refer to other stored templates, part for part.",
                    "parameters": [name_param.clone()],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/TemplateRequest"}}}},
                    "responses": {"200": {"description": "Stored", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Template"}}}},
                                  "422": template_error_response("Invalid name or field, a syntax error (with part, line, column), or a template that fails its trial render"),
                                  "503": error_response("The template renderer is busy (code renderer_busy)")}
                },
                "get": {
                    "summary": "One stored template",
                    "parameters": [name_param.clone()],
                    "responses": {"200": {"description": "The template", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Template"}}}},
                                  "404": error_response("No such template")}
                },
                "delete": {
                    "summary": "Delete a stored template",
                    "parameters": [name_param.clone()],
                    "responses": {"200": {"description": "Deleted"}, "404": error_response("No such template")}
                }
            },
            "/v1/templates/{name}/preview": {"post": {
                "summary": "Render a template with data: exactly the subject, text and html a message would carry",
                "description": "CSS from <style> is inlined into the html; when the template has no text part, the text is made from the html.",
                "parameters": [name_param],
                "requestBody": {"content": {"application/json": {"schema": {"type": "object", "properties": {"data": {"type": "object"}}}}}},
                "responses": {"200": {"description": "The rendered parts", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Rendered"}}}},
                              "404": error_response("No such template"),
                              "422": template_error_response("The template failed with this data (with template, part, line, column)"),
                              "503": error_response("The template renderer is busy (code renderer_busy)")}
            }},
            "/healthz": {"get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"summary": "Store reachable", "security": [], "responses": {"200": {"description": "ready"}, "503": error_response("Store unreachable")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics (labels: route pattern, a standard method or `other`, status)",
                "description": "Open unless HERALD_METRICS_TOKEN is set; then that token is required as a bearer token.",
                "security": [{}, {"metricsToken": []}],
                "responses": {"200": {"description": "Prometheus text format"}, "401": error_response("HERALD_METRICS_TOKEN is set and was not sent")}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/": {"get": {"summary": "Dashboard overview (HTML); the other dashboard pages are described in the README", "security": [], "responses": {"200": {"description": "HTML"}, "303": {"description": "Sign-in needed: redirect to /login"}}}}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "metricsToken": {"type": "http", "scheme": "bearer", "description": "HERALD_METRICS_TOKEN"}},
            "schemas": {
                "Status": {"type": "string", "enum": ["scheduled", "queued", "sending", "deferred", "delivered", "failed", "cancelled"]},
                "Addresses": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]},
                "Attachment": {"type": "object", "required": ["filename", "content_base64"], "properties": {
                    "filename": {"type": "string"}, "content_type": {"type": "string"},
                    "content_base64": {"type": "string"}, "inline": {"type": "boolean"}, "content_id": {"type": "string"}}},
                "MessageRequest": {"type": "object", "description": "Either subject + text and/or html, or template + data.", "properties": {
                    "from": {"type": "string", "description": "\"Name <addr>\" or addr; optional when HERALD_FROM is set"},
                    "to": {"$ref": "#/components/schemas/Addresses"}, "cc": {"$ref": "#/components/schemas/Addresses"},
                    "bcc": {"$ref": "#/components/schemas/Addresses"}, "reply_to": {"$ref": "#/components/schemas/Addresses"},
                    "subject": {"type": "string"}, "text": {"type": "string"}, "html": {"type": "string", "description": "Without text, the text part is made from this HTML (as for a template without a text part)."},
                    "template": {"type": "string", "description": "A stored template's name, instead of subject/text/html"},
                    "data": {"type": "object", "description": "The template's variables"},
                    "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Attachment"}},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Written in the order given. Refused (422): headers Herald writes itself, and trace and authentication headers receiving servers trust (Authentication-Results, ARC-*, DKIM-Signature, DomainKey-Signature, Received, Received-SPF, Return-Path, Delivered-To, X-Original-To, X-Spam-*)."},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                    "metadata": {"type": "object"},
                    "send_at": {"type": "string", "format": "date-time"},
                    "idempotency_key": {"type": "string", "maxLength": 255}}},
                "Accepted": {"type": "object", "required": ["id", "status"], "properties": {
                    "id": {"type": "string"}, "status": {"type": "string", "enum": ["queued", "scheduled", "sending", "deferred", "delivered", "failed", "cancelled"]}}},
                "Summary": {"type": "object", "properties": {
                    "id": {"type": "string"}, "status": {"$ref": "#/components/schemas/Status"},
                    "created_at": {"type": "string", "format": "date-time"}, "from": {"type": "string"},
                    "subject": {"type": "string"}, "attempts": {"type": "integer"},
                    "to": {"type": "array", "maxItems": 3, "items": {"type": "string"},
                           "description": "The first 3 recipient addresses (to, cc and bcc, in request order)"},
                    "recipient_count": {"type": "integer", "description": "All recipients of the message"}}},
                "Message": {"type": "object", "properties": {
                    "id": {"type": "string"}, "status": {"$ref": "#/components/schemas/Status"},
                    "created_at": {"type": "string", "format": "date-time"},
                    "send_at": {"type": ["string", "null"], "format": "date-time"},
                    "from": {"type": "string"}, "to": {"type": "array", "items": {"type": "string"}},
                    "subject": {"type": "string"}, "attempts": {"type": "integer"},
                    "batch_id": {"type": ["string", "null"], "description": "The batch that made this message (POST /v1/batches)"},
                    "recipients": {"type": "array", "items": {"type": "object", "properties": {
                        "address": {"type": "string"}, "kind": {"type": "string"},
                        "status": {"type": "string", "enum": ["pending", "deferred", "delivered", "failed", "cancelled", "suppressed", "bounced", "complained"],
                                   "description": "bounced: accepted by the relay, then reported permanently undeliverable by a DSN; complained: its mailbox provider reported a complaint (ARF). Both come from HERALD_BOUNCE_DOMAIN's intake; smtp_code, enhanced_status and smtp_reply then hold the report's"},
                        "smtp_code": {"type": ["integer", "null"]}, "enhanced_status": {"type": ["string", "null"]},
                        "smtp_reply": {"type": ["string", "null"]}}}},
                    "events": {"type": "array", "items": {"type": "object", "properties": {
                        "at": {"type": "string", "format": "date-time"}, "type": {"type": "string", "description": "queued or scheduled (accepted), sending (claimed), cancelled, a recipient's status, attempt_<message status>; attempt_interrupted: the node delivering it stopped (not counted as an attempt, due again at once); stale_outcome: a result from a node that had lost the lease (shown, not applied); bounced, complained: a report received at HERALD_BOUNCE_DOMAIN (detail: the diagnostic); soft_bounced, delayed: a report of a temporary failure or a delay (the recipient's status is unchanged); suppressed: the recipient was on the suppression list at accept, or was put on it (bad mailbox, unsubscribe link, bounce)"},
                        "recipient": {"type": ["string", "null"]}, "detail": {"type": ["string", "null"]}}}}}},
                "BatchRequest": {"type": "object", "required": ["template", "recipients"], "properties": {
                    "template": {"type": "string"},
                    "from": {"type": "string", "description": "optional when HERALD_FROM is set"},
                    "reply_to": {"$ref": "#/components/schemas/Addresses"},
                    "recipients": {"type": "array", "minItems": 1, "maxItems": 10000, "items": {"type": "object", "required": ["to"], "properties": {
                        "to": {"$ref": "#/components/schemas/Addresses"}, "data": {"type": "object"}}}},
                    "attachments": {"type": "array", "items": {"$ref": "#/components/schemas/Attachment"}},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"},
                                "description": "Written in the order given. Refused (422): headers Herald writes itself, and trace and authentication headers receiving servers trust (Authentication-Results, ARC-*, DKIM-Signature, DomainKey-Signature, Received, Received-SPF, Return-Path, Delivered-To, X-Original-To, X-Spam-*)."},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 32},
                    "metadata": {"type": "object"},
                    "send_at": {"type": "string", "format": "date-time"},
                    "idempotency_key": {"type": "string", "maxLength": 255}}},
                "BatchAccepted": {"type": "object", "required": ["batch_id", "ids", "status"], "properties": {
                    "batch_id": {"type": "string"}, "status": {"type": "string", "enum": ["queued", "scheduled"]},
                    "ids": {"type": "array", "items": {"type": "string"}, "description": "One message id per recipient, in order"}}},
                "DkimKeyRequest": {"type": "object", "required": ["selector"], "additionalProperties": false, "properties": {
                    "domain": {"type": "string", "description": "The signing domain (POST /v1/dkim only; IDN domains are stored in their A-label form)"},
                    "selector": {"type": "string", "description": "DNS label(s): the record goes at <selector>._domainkey.<domain>"},
                    "algorithm": {"type": "string", "enum": ["rsa", "ed25519"], "default": "rsa", "description": "rsa: 2048 bits, verified by every receiver; ed25519: RFC 8463"}}},
                "DkimKey": {"type": "object", "required": ["domain", "selector", "algorithm", "active", "encrypted", "created_at", "dns_name", "dns_record", "zone_line"], "properties": {
                    "domain": {"type": "string"}, "selector": {"type": "string"}, "algorithm": {"type": "string", "enum": ["rsa", "ed25519"]},
                    "active": {"type": "boolean", "description": "The key the domain signs with now (its newest key not retired)"},
                    "encrypted": {"type": "boolean", "description": "The private key is sealed with HERALD_SECRET_KEY in the store"},
                    "created_at": {"type": "string", "format": "date-time"}, "retired_at": {"type": ["string", "null"], "format": "date-time"},
                    "dns_name": {"type": "string"}, "dns_record": {"type": "string", "description": "The TXT record's value"},
                    "zone_line": {"type": "string", "description": "The record as a zone-file line, in strings of at most 255 bytes"}}},
                "TemplateRequest": {"type": "object", "required": ["subject"], "description": "At least one of text and html. A template as GET returns it may be sent back: name (if given, the one in the path) and updated_at are accepted and ignored.", "properties": {
                    "name": {"type": "string"}, "updated_at": {"type": "string"},
                    "subject": {"type": "string"}, "text": {"type": ["string", "null"]}, "html": {"type": ["string", "null"]}}},
                "Template": {"type": "object", "properties": {
                    "name": {"type": "string"}, "subject": {"type": "string"}, "text": {"type": ["string", "null"]},
                    "html": {"type": ["string", "null"]}, "updated_at": {"type": "string", "format": "date-time"}}},
                "Rendered": {"type": "object", "required": ["subject", "text", "html"], "properties": {
                    "subject": {"type": "string"}, "text": {"type": "string"}, "html": {"type": ["string", "null"]}}},
                "TemplateError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                    "field": {"type": ["string", "null"]}, "template": {"type": "string"},
                    "part": {"type": "string", "enum": ["subject", "text", "html"]},
                    "line": {"type": "integer"}, "column": {"type": ["integer", "null"]}}}}},
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                    "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                    "field": {"type": ["string", "null"]}}}}}
            }
        }
    });
    // Added apart: one more field in the literal above exceeds `json!`'s recursion limit.
    // Issue 12: the bounce intake's kept mail (apart from the literal above, which is at json!'s recursion limit).
    let inbound_paths = json!({
            "/v1/inbound": {"get": {
                "summary": "Mail received at HERALD_BOUNCE_DOMAIN that could not be read or matched (kept, never dropped), newest first",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 50}},
                    {"name": "cursor", "in": "query", "description": "next_cursor of the previous page", "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items", "next_cursor"],
                    "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/InboundMail"}},
                                   "next_cursor": {"type": ["string", "null"]}}}}}},
                              "422": error_response("Invalid limit or cursor (named in error.field)")}
            }},
            "/v1/inbound/{id}": {"get": {
                "summary": "One kept mail",
                "parameters": [id_param.clone()],
                "responses": {"200": {"description": "The entry", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/InboundMail"}}}},
                              "404": error_response("No such entry")}
            }},
            "/v1/inbound/{id}/raw": {"get": {
                "summary": "The kept mail's bytes as received (at most HERALD_BOUNCE_MAX_SIZE), as an attachment",
                "parameters": [id_param.clone()],
                "responses": {"200": {"description": "The bytes", "content": {"message/rfc822": {}}},
                              "404": error_response("No such entry")}
            }}
    });
    for (path, operations) in inbound_paths.as_object().expect("an object") {
        document["paths"][path] = operations.clone();
    }
    document["components"]["schemas"]["InboundMail"] = json!({"type": "object", "properties": {
                    "id": {"type": "string"}, "received_at": {"type": "string", "format": "date-time"},
                    "peer": {"type": "string", "description": "The sending client's ip:port"},
                    "mail_from": {"type": "string", "description": "MAIL FROM (empty for the null reverse path of a DSN)"},
                    "rcpt_to": {"type": "array", "items": {"type": "string"}},
                    "reason": {"type": "string", "enum": ["unparseable", "unmatched", "forged"],
                               "description": "unparseable: not a DSN or ARF report Herald reads; unmatched: a report about no message or recipient here (or one that reports no failure); forged: a VERP or unsubscribe token that does not verify"},
                    "detail": {"type": "string"},
                    "message_id": {"type": ["string", "null"], "description": "The message it seemed to be about, if any"},
                    "size": {"type": "integer", "description": "Bytes kept"}}});
    document["components"]["schemas"]["Message"]["properties"]["source"] = json!({
        "type": "string", "enum": ["api", "smtp"],
        "description": "How the message arrived: the HTTP API (or the CLI, the dashboard), or SMTP submission (HERALD_SMTP_LISTEN)"
    });
    add_webhooks(&mut document);
    suppression_paths(&mut document);
    document
}

/// `/v1/webhooks` (issue 12), apart from the literal above for `json!`'s recursion limit.
fn add_webhooks(document: &mut Value) {
    let id_param =
        json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let endpoint = json!({"$ref": "#/components/schemas/Webhook"});
    let request = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookRequest"}}}});
    let with_secret = json!({"allOf": [endpoint.clone(), {"type": "object", "required": ["secret"], "properties": {
        "secret": {"type": "string", "description": "whsec_ and the base64 of the signing key, shown this once: verify requests with it (Standard Webhooks libraries take it as it is)"}}}]});
    let paths = json!({
        "/v1/webhooks": {
            "get": {"summary": "The webhook endpoints (never their secrets)",
                "responses": {"200": {"description": "The endpoints", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": endpoint.clone()}}}}}}}},
            "post": {"summary": "Add an endpoint; its signing secret is in this answer only",
                "description": "Events are POSTed as JSON (see WebhookEvent) with the Standard Webhooks headers webhook-id (the event's id, the same on every attempt), webhook-timestamp and webhook-signature. The URL must be http(s), without credentials, and must not resolve to a loopback, private, link-local or reserved address unless HERALD_WEBHOOK_ALLOW_PRIVATE=1 (checked again at every connection); redirects are not followed.",
                "requestBody": request.clone(),
                "responses": {"201": {"description": "Created", "content": {"application/json": {"schema": with_secret.clone()}}},
                              "400": error_response("Unreadable request"),
                              "422": error_response("A field is invalid (named in error.field: url, events, description, enabled, or an unknown field)")}}
        },
        "/v1/webhooks/{id}": {
            "get": {"summary": "One endpoint", "parameters": [id_param.clone()],
                "responses": {"200": {"description": "The endpoint", "content": {"application/json": {"schema": endpoint.clone()}}},
                              "404": error_response("No such endpoint")}},
            "patch": {"summary": "Change an endpoint's url, events, description or enabled (the fields given); enabled: true also clears an automatic disable",
                "parameters": [id_param.clone()], "requestBody": request,
                "responses": {"200": {"description": "The endpoint as it is now", "content": {"application/json": {"schema": endpoint.clone()}}},
                              "404": error_response("No such endpoint"),
                              "422": error_response("A field is invalid (named in error.field)")}},
            "delete": {"summary": "Delete an endpoint and its deliveries", "parameters": [id_param.clone()],
                "responses": {"200": {"description": "Deleted"}, "404": error_response("No such endpoint")}}
        },
        "/v1/webhooks/{id}/rotate-secret": {"post": {
            "summary": "A new signing secret (in this answer only); the old one keeps signing beside it for 24 hours (two v1, signatures in webhook-signature)",
            "parameters": [id_param.clone()],
            "responses": {"200": {"description": "Rotated", "content": {"application/json": {"schema": with_secret}}},
                          "404": error_response("No such endpoint")}}},
        "/v1/webhooks/{id}/deliveries": {"get": {
            "summary": "The endpoint's newest deliveries, newest first: status, attempts, the last attempt's HTTP status, latency, response excerpt and error",
            "parameters": [id_param.clone(), {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}}],
            "responses": {"200": {"description": "Deliveries", "content": {"application/json": {"schema": {
                "type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": {"$ref": "#/components/schemas/WebhookDelivery"}}}}}}},
                          "404": error_response("No such endpoint"), "422": error_response("Invalid limit")}}},
        "/v1/webhooks/{id}/deliveries/{delivery}/retry": {"post": {
            "summary": "Send again: the delivery is due now (with the same webhook-id), whatever its status",
            "parameters": [id_param, {"name": "delivery", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"202": {"description": "Queued"},
                          "404": error_response("No such delivery for this endpoint, or it is being sent right now"),
                          "422": error_response("Not a delivery id")}}}
    });
    let event_types = json!(crate::store::webhooks::EVENT_TYPES);
    let schemas = json!({
        "WebhookRequest": {"type": "object", "additionalProperties": false, "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048, "description": "Required to create"},
            "events": {"type": "array", "items": {"type": "string", "enum": event_types.clone()}, "description": "The event types wanted; empty or left out: every type"},
            "description": {"type": "string", "maxLength": 1000},
            "enabled": {"type": "boolean", "default": true}}},
        "Webhook": {"type": "object", "required": ["id", "url", "events", "all_events", "description", "enabled", "created_at", "updated_at"], "properties": {
            "id": {"type": "string"}, "url": {"type": "string"},
            "events": {"type": "array", "items": {"type": "string", "enum": event_types.clone()}},
            "all_events": {"type": "boolean", "description": "No filter: new event types are sent too"},
            "description": {"type": "string"}, "enabled": {"type": "boolean"},
            "disabled_reason": {"type": ["string", "null"], "description": "Set when Herald disabled the endpoint after every delivery failed for HERALD_WEBHOOK_DISABLE_AFTER"},
            "failing_since": {"type": ["string", "null"], "format": "date-time", "description": "Since when every delivery failed (null after a success)"},
            "previous_secret_valid_until": {"type": ["string", "null"], "format": "date-time", "description": "After a rotation: until when the old secret signs too"},
            "created_at": {"type": "string", "format": "date-time"}, "updated_at": {"type": "string", "format": "date-time"}}},
        "WebhookDelivery": {"type": "object", "required": ["id", "event_id", "event_type", "status", "attempts", "created_at"], "properties": {
            "id": {"type": "integer"}, "event_id": {"type": "string", "description": "The webhook-id the receiver sees"},
            "event_type": {"type": "string", "enum": event_types.clone()},
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"], "description": "failed: given up after HERALD_WEBHOOK_MAX_AGE"},
            "attempts": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"},
            "next_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            "last_attempt_at": {"type": ["string", "null"], "format": "date-time"},
            "response_status": {"type": ["integer", "null"]}, "latency_ms": {"type": ["integer", "null"]},
            "response_excerpt": {"type": ["string", "null"], "description": "The start (512 bytes) of the last response's body"},
            "error": {"type": ["string", "null"], "description": "Why the last attempt failed (HTTP status, timeout, refused address, redirect not followed)"},
            "delivered_at": {"type": ["string", "null"], "format": "date-time"}}},
        "WebhookEvent": {"type": "object", "description": "The body POSTed to an endpoint", "required": ["id", "type", "timestamp", "data"], "properties": {
            "id": {"type": "string", "description": "evt_<n>: the same as webhook-id, on every attempt"},
            "type": {"type": "string", "enum": event_types},
            "timestamp": {"type": "string", "format": "date-time", "description": "When the state change was committed"},
            "data": {"type": "object", "properties": {
                "message_id": {"type": "string"}, "recipient": {"type": ["string", "null"], "description": "Per-recipient events: the address"},
                "from": {"type": "string"}, "subject": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}, "metadata": {"type": "object"},
                "smtp_code": {"type": ["integer", "null"]}, "enhanced_status": {"type": ["string", "null"]},
                "reply": {"type": ["string", "null"], "description": "The server's reply this event reports (deferred, failed, delivered)"}}}}}
    });
    if let (Some(all), Value::Object(more)) = (document["paths"].as_object_mut(), paths) {
        all.extend(more);
    }
    if let (Some(all), Value::Object(more)) =
        (document["components"]["schemas"].as_object_mut(), schemas)
    {
        all.extend(more);
    }
}

/// Issue 12: the suppression list, unsubscribe links and the fields they add (apart, for `json!`'s limit).
fn suppression_paths(document: &mut Value) {
    let address_param = json!({"name": "address", "in": "path", "required": true,
        "description": "An email address; compared lowercased, with its domain in ASCII (IDNA)", "schema": {"type": "string"}});
    let token_param =
        json!({"name": "token", "in": "path", "required": true, "schema": {"type": "string"}});
    let list = json!({"type": "object", "required": ["items"], "properties": {
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Suppression"}},
        "next_cursor": {"type": ["string", "null"]}}});
    document["paths"]["/v1/suppressions"] = json!({
        "get": {
            "summary": "The suppression list, by address and scope, a page at a time",
            "parameters": [
                {"name": "q", "in": "query", "description": "Addresses containing this text (case-insensitive)", "schema": {"type": "string", "maxLength": 254}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "cursor", "in": "query", "description": "next_cursor of the previous page", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": list.clone()}}},
                          "422": error_response("A bad limit or cursor (named in error.field)")}
        },
        "post": {
            "summary": "Put an address on the list (an entry for the same address and scope is updated: new reason and source, the later expiry)",
            "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/SuppressionRequest"}}}},
            "responses": {"201": {"description": "On the list", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Suppression"}}}},
                          "422": error_response("A field is invalid (named in error.field)")}
        }
    });
    document["paths"]["/v1/suppressions/{address}"] = json!({
        "get": {"summary": "Every entry (all scopes) of one address", "parameters": [address_param.clone()],
                "responses": {"200": {"description": "The entries", "content": {"application/json": {"schema": list}}},
                              "404": error_response("Not on the list")}},
        "delete": {"summary": "Take an address off the list: every entry, or with ?scope= only that scope's (an empty scope: the unscoped entry)",
                   "parameters": [address_param, {"name": "scope", "in": "query", "schema": {"type": "string"}}],
                   "responses": {"200": {"description": "Removed", "content": {"application/json": {"schema": {"type": "object", "properties": {"deleted": {"type": "integer"}}}}}},
                                 "404": error_response("Not on the list")}}
    });
    document["paths"]["/v1/suppressions/import"] = json!({"post": {
        "summary": "Add entries from CSV (columns address, scope, reason, expires_at, source_message; created_at ignored); every line is checked before any is stored",
        "requestBody": {"required": true, "content": {"text/csv": {"schema": {"type": "string"}}}},
        "responses": {"200": {"description": "Stored", "content": {"application/json": {"schema": {"type": "object", "properties": {"imported": {"type": "integer"}}}}}},
                      "422": error_response("A bad line: error.field is `line N`, the message names the column")}
    }});
    document["paths"]["/v1/suppressions/export"] = json!({"get": {
        "summary": "The whole list as CSV (address,scope,reason,expires_at,source_message,created_at), what import reads back",
        "responses": {"200": {"description": "CSV", "content": {"text/csv": {"schema": {"type": "string"}}}}}
    }});
    document["paths"]["/u/{token}"] = json!({
        "get": {"summary": "One-click unsubscribe: a confirmation page with a button (never unsubscribes by itself: link scanners fetch every URL)",
                "security": [], "parameters": [token_param.clone()],
                "responses": {"200": {"description": "The page", "content": {"text/html": {}}},
                              "404": {"description": "Not a link Herald made (or its message is gone)"}}},
        "post": {"summary": "One-click unsubscribe (RFC 8058): suppresses the message's recipient for the message's list; no login, no CSRF token (the signed token is the authority)",
                 "security": [], "parameters": [token_param],
                 "requestBody": {"content": {"application/x-www-form-urlencoded": {"schema": {"type": "string", "example": "List-Unsubscribe=One-Click"}}}},
                 "responses": {"200": {"description": "Unsubscribed (an empty body; a small page when posted by the confirmation page, from=page)"},
                               "404": {"description": "Not a link Herald made (or its message is gone)"}}}
    });
    let schemas = &mut document["components"]["schemas"];
    schemas["Suppression"] = json!({"type": "object", "required": ["address", "scope", "reason", "created_at"], "properties": {
        "address": {"type": "string", "description": "Lowercased, the domain in ASCII"},
        "scope": {"type": ["string", "null"], "description": "A tag or unsubscribe list; null: every message"},
        "reason": {"type": "string", "enum": ["hard_bounce", "complaint", "unsubscribe", "manual"]},
        "source_message": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time",
            "description": "From then on the entry no longer applies; the hourly housekeeping (first run at start) deletes it"}}});
    schemas["SuppressionRequest"] = json!({"type": "object", "required": ["address"], "additionalProperties": false, "properties": {
        "address": {"type": "string"}, "scope": {"type": "string", "description": "1 to 128 characters; absent: every message"},
        "reason": {"type": "string", "enum": ["hard_bounce", "complaint", "unsubscribe", "manual"], "default": "manual"},
        "expires_at": {"type": "string", "format": "date-time"},
        "source_message": {"type": "string"}}});
    let ignore = json!({"type": "boolean", "default": false,
        "description": "Send to suppressed recipients too (password resets and other mail the recipient asked for)"});
    let list = json!({"type": "string", "minLength": 1, "maxLength": 128,
        "description": "The list the link unsubscribes from (a suppression scoped to it)"});
    let unsubscribe = json!({"type": ["object", "null"], "required": ["list"], "additionalProperties": false,
        "description": "Adds List-Unsubscribe (https link to HERALD_PUBLIC_URL/u/TOKEN, and mailto:unsub+TOKEN@HERALD_BOUNCE_DOMAIN when set) and List-Unsubscribe-Post: List-Unsubscribe=One-Click. Needs HERALD_PUBLIC_URL (else 422) and one recipient per message (a batch gives each its own link). With a stored template that has an unsubscribe: absent takes the template's, an object replaces it, null sends without any.",
        "properties": {"list": list.clone()}});
    for request in ["MessageRequest", "BatchRequest"] {
        schemas[request]["properties"]["ignore_suppressions"] = ignore.clone();
        schemas[request]["properties"]["unsubscribe"] = unsubscribe.clone();
    }
    // A stored template's unsubscribe: what its messages and batches get unless their request says otherwise.
    let template_unsubscribe = json!({"type": ["object", "null"], "required": ["list"], "additionalProperties": false,
        "description": "One-click unsubscribe for every message and batch made from this template, as their own `unsubscribe` field would add it (their request's `unsubscribe` wins; null there sends without). Needs HERALD_PUBLIC_URL when stored (else 422 on unsubscribe); null or absent: none.",
        "properties": {"list": list}});
    schemas["TemplateRequest"]["properties"]["unsubscribe"] = template_unsubscribe.clone();
    schemas["Template"]["properties"]["unsubscribe"] = template_unsubscribe.clone();
    let suppressed = json!({"type": "array", "items": {"type": "string"},
        "description": "Recipients on the suppression list: not sent to (a message whose every recipient is is failed at once)"});
    schemas["Accepted"]["properties"]["suppressed"] = suppressed.clone();
    schemas["Message"]["properties"]["suppressed"] = suppressed;
    schemas["BatchAccepted"]["properties"]["suppressed"] = json!({"type": "array", "items": {"type": "object",
        "properties": {"id": {"type": "string"}, "address": {"type": "string"}}},
        "description": "Recipients on the suppression list, with their message"});
    schemas["Message"]["properties"]["recipients"]["items"]["properties"]["status"] = json!({"type": "string",
        "enum": ["pending", "deferred", "delivered", "failed", "cancelled", "suppressed", "bounced", "complained"]});
    document["paths"]["/v1/templates"]["get"]["responses"]["200"]["content"]["application/json"]
        ["schema"]["properties"]["items"]["items"]["properties"]["unsubscribe"] =
        template_unsubscribe;
}
