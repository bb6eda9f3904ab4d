//! Search in every language, on both stores: a word inside Chinese, Japanese, Korean, Thai, Russian or
//! German text is found, through the store and through `GET /v1/messages?q=` and the dashboard, while Latin
//! words keep matching whole words as before. And PostgreSQL's own statistics upkeep.

// A test crate: a failed unwrap is a failed test (see Cargo.toml's [workspace.lints]).
#![allow(clippy::unwrap_used)]

mod app;
mod common;

use std::time::Duration;

use app::{DEFAULTS, spawn_app};
use bytes::Bytes;
use common::{Backend, TestStore};
use herald::store::{NewMessage, SearchQuery};
use serde_json::{Value, json};

mod store_level {
    use super::*;

    crate::on_both_stores!(
        words_inside_unspaced_scripts_are_found,
        one_cjk_character_is_found,
        mixed_queries_need_every_word,
        russian_inflections_meet_by_stem,
        german_compounds_are_found_by_their_parts,
        latin_words_still_match_whole_words,
        many_matches_page_newest_first_each_once,
    );

    fn message(n: usize, subject: &str, body: &str) -> NewMessage {
        NewMessage {
            subject: subject.to_owned(),
            search_text: body.to_owned(),
            ..common::new_message(
                &format!("msg-{n:06}"),
                "shop@example.test",
                &["a@example.test"],
                Bytes::from(format!("Subject: {n}\r\n\r\nbody\r\n")),
            )
        }
    }

    /// Stores the messages one millisecond apart (so newest first is a strict order), in order.
    async fn fill(t: &TestStore, messages: &[(&str, &str)]) {
        for (n, (subject, body)) in messages.iter().enumerate() {
            t.store
                .accept(vec![message(n, subject, body)])
                .await
                .unwrap();
            t.clock.advance(Duration::from_millis(1));
        }
    }

    /// The ids of every match, through all pages of `limit`.
    async fn ids(t: &TestStore, text: &str, limit: u32) -> Vec<String> {
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = t
                .store
                .search(&SearchQuery {
                    text: Some(text.into()),
                    limit,
                    cursor,
                    ..Default::default()
                })
                .await
                .unwrap();
            seen.extend(page.items.into_iter().map(|m| m.id));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => return seen,
            }
        }
    }

    fn expect(ns: &[usize]) -> Vec<String> {
        ns.iter().map(|n| format!("msg-{n:06}")).collect()
    }

    const CORPUS: &[(&str, &str)] = &[
        ("您的订单已发货 📦", "感谢您的购买，包裹正在路上。"), // 0 zh
        ("ご注文の商品を発送しました", "お届けまで2〜3日かかります。"), // 1 ja
        (
            "주문하신 상품이 배송되었습니다",
            "배송 조회는 아래 링크에서",
        ), // 2 ko
        ("คำสั่งซื้อของคุณถูกจัดส่งแล้ว", "ขอบคุณที่สั่งซื้อสินค้ากับเรา"),       // 3 th
        ("Ваш заказ отправлен", "Спасибо за заказ в нашем магазине"), // 4 ru
        (
            "Versandbestätigung für Ihre Bestellung",
            "Ihre Sendungsnummer folgt",
        ), // 5 de
        ("Your order has shipped", "Track your parcel online"), // 6 en
        ("订单 shipped", "Order 订单 update"),                 // 7 mixed
    ];

    /// The sentence, and a word inside each unspaced script.
    async fn words_inside_unspaced_scripts_are_found(t: TestStore) {
        fill(&t, CORPUS).await;
        assert_eq!(
            ids(&t, "发货", 10).await,
            expect(&[0]),
            "a word inside Chinese"
        );
        assert_eq!(
            ids(&t, "您的订单已发货", 10).await,
            expect(&[0]),
            "the whole run"
        );
        assert_eq!(ids(&t, "包裹", 10).await, expect(&[0]), "from the body");
        assert_eq!(ids(&t, "発送", 10).await, expect(&[1]), "Japanese");
        assert_eq!(
            ids(&t, "商品", 10).await,
            expect(&[1]),
            "Japanese kanji in kana"
        );
        assert_eq!(
            ids(&t, "배송", 10).await,
            expect(&[2]),
            "Korean word with a particle glued on"
        );
        assert_eq!(ids(&t, "상품", 10).await, expect(&[2]), "Korean");
        assert_eq!(
            ids(&t, "จัดส่ง", 10).await,
            expect(&[3]),
            "Thai: 'deliver' inside a sentence"
        );
        assert_eq!(
            ids(&t, "สินค้า", 10).await,
            expect(&[3]),
            "Thai: 'goods' in the body"
        );
        assert!(ids(&t, "发送", 10).await.is_empty(), "a pair in no message");
        assert!(
            ids(&t, "订发", 10).await.is_empty(),
            "characters present, but not side by side"
        );
    }

    /// A query shorter than a pair: one character is indexed on its own.
    async fn one_cjk_character_is_found(t: TestStore) {
        fill(&t, CORPUS).await;
        assert_eq!(
            ids(&t, "货", 10).await,
            expect(&[0]),
            "the last character of a run"
        );
        assert_eq!(ids(&t, "订", 10).await, expect(&[7, 0]), "newest first");
        assert_eq!(ids(&t, "배", 10).await, expect(&[2]));
        assert!(ids(&t, "猫", 10).await.is_empty());
    }

    async fn mixed_queries_need_every_word(t: TestStore) {
        fill(&t, CORPUS).await;
        assert_eq!(ids(&t, "订单 shipped", 10).await, expect(&[7]));
        assert_eq!(
            ids(&t, "shipped 订单", 10).await,
            expect(&[7]),
            "in any order"
        );
        assert_eq!(ids(&t, "shipped", 10).await, expect(&[7, 6]));
        assert_eq!(ids(&t, "订单", 10).await, expect(&[7, 0]));
        assert!(
            ids(&t, "订单 parcel", 10).await.is_empty(),
            "every word must match"
        );
    }

    /// Russian words are indexed and searched by their Snowball stem: case forms of a noun find each other.
    async fn russian_inflections_meet_by_stem(t: TestStore) {
        fill(&t, CORPUS).await;
        for form in ["заказ", "Заказа", "заказом", "заказы"] {
            assert_eq!(ids(&t, form, 10).await, expect(&[4]), "{form}");
        }
        assert_eq!(ids(&t, "магазин", 10).await, expect(&[4]), "нашем магазине");
        assert!(ids(&t, "доставка", 10).await.is_empty());
    }

    /// A long word is also found by its first or last part (each at least four letters).
    async fn german_compounds_are_found_by_their_parts(t: TestStore) {
        fill(&t, CORPUS).await;
        assert_eq!(
            ids(&t, "Bestätigung", 10).await,
            expect(&[5]),
            "tail, folded"
        );
        assert_eq!(ids(&t, "versand", 10).await, expect(&[5]), "head");
        assert_eq!(ids(&t, "Sendungsnummer", 10).await, expect(&[5]), "whole");
        assert_eq!(
            ids(&t, "nummer", 10).await,
            expect(&[5]),
            "tail in the body"
        );
        assert_eq!(
            ids(&t, "bestellung", 10).await,
            expect(&[5]),
            "a short word, whole"
        );
        assert!(
            ids(&t, "sand", 10).await.is_empty(),
            "not any substring: a part is a head or a tail"
        );
    }

    /// What the Latin search did before stays: whole words, folded, AND, user syntax is text.
    async fn latin_words_still_match_whole_words(t: TestStore) {
        fill(&t, CORPUS).await;
        assert_eq!(ids(&t, "ORDER", 10).await, expect(&[7, 6]));
        assert_eq!(ids(&t, "order parcel", 10).await, expect(&[6]));
        assert!(ids(&t, "ord", 10).await.is_empty(), "no prefix match");
        assert!(
            ids(&t, "orders", 10).await.is_empty(),
            "no stemming of Latin words"
        );
        assert!(
            ids(&t, "\"OR* NEAR( & !x:*", 10).await.is_empty(),
            "syntax is text"
        );
        assert_eq!(
            ids(&t, "für", 10).await,
            ids(&t, "fur", 10).await,
            "diacritics folded"
        );
        assert_eq!(ids(&t, "fur", 10).await, expect(&[5]));
        assert_eq!(
            ids(&t, "shop@example.test", 10).await.len(),
            CORPUS.len(),
            "addresses"
        );
    }

    /// Paging a common CJK word, a common character and a common Latin word: every match once, newest first.
    async fn many_matches_page_newest_first_each_once(t: TestStore) {
        let n = 2_100;
        let batch: Vec<NewMessage> = (0..n)
            .map(|i| {
                let subject = if i % 3 == 0 {
                    format!("订单 {i} 已发货")
                } else {
                    format!("Order {i} 已发货")
                };
                message(i, &subject, "ขอบคุณ")
            })
            .collect();
        for chunk in batch.chunks(700) {
            t.store.accept(chunk.to_vec()).await.unwrap();
            t.clock.advance(Duration::from_millis(1));
        }
        for (query, want) in [
            ("发货", n),
            ("货", n),
            ("订单", n.div_ceil(3)),
            ("order", n - n.div_ceil(3)),
        ] {
            let seen = ids(&t, query, 400).await;
            assert_eq!(seen.len(), want, "{query}: every match");
            let mut sorted = seen.clone();
            sorted.sort_by(|a, b| b.cmp(a));
            sorted.dedup();
            // Ids grow with creation time here, so newest first is descending ids.
            assert_eq!(seen, sorted, "{query}: newest first, none twice");
        }
    }
}

fn order(subject: &str) -> Value {
    json!({"from": "shop@example.test", "to": ["kunde@example.test"], "subject": subject, "text": "订单详情见附件"})
}

/// The issue's own example through the API and the dashboard, on both stores.
async fn the_api_and_the_dashboard_find_a_word_inside_chinese(backend: Backend) {
    let Some(app) = spawn_app(backend, DEFAULTS).await else {
        return;
    };
    let shipped: Value = app
        .post_message(&order("您的订单已发货 📦"))
        .await
        .json()
        .await
        .unwrap();
    let other: Value = app
        .post_message(&order("Weekly digest"))
        .await
        .json()
        .await
        .unwrap();
    let hit = app.list_messages("q=发货").await;
    let items = hit["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{hit}");
    assert_eq!(items[0]["id"], shipped["id"]);
    assert_eq!(items[0]["subject"], "您的订单已发货 📦");
    let body_hit = app.list_messages("q=详情").await;
    assert_eq!(
        body_hit["items"].as_array().unwrap().len(),
        2,
        "the text body is searched too"
    );
    let one = app.list_messages("q=货").await;
    assert_eq!(one["items"].as_array().unwrap().len(), 1);

    let html = reqwest::get(format!("{}/messages?q=发货", app.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains(&format!("/messages/{}", shipped["id"].as_str().unwrap())),
        "{html}"
    );
    assert!(!html.contains(&format!("/messages/{}", other["id"].as_str().unwrap())));
}

mod api_level {
    use super::*;

    crate::on_both_backends!(the_api_and_the_dashboard_find_a_word_inside_chinese);
}

/// PostgreSQL without autovacuum: the upkeep analyzes a table once it has grown by a tenth since its last
/// ANALYZE, and not before, and leaves a table of a few pages alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upkeep_analyzes_tables_as_they_grow() {
    use sqlx::Connection;
    let Some(t) = common::open(Backend::Postgres).await else {
        return;
    };
    let url = t.pg_url.clone().unwrap();
    let mut db = sqlx::PgConnection::connect(&url).await.unwrap();
    let stat = async |db: &mut sqlx::PgConnection, column: &str| -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT {column} FROM pg_stat_user_tables WHERE relname = 'messages'"
        )))
        .fetch_one(db)
        .await
        .unwrap()
    };
    // A backend's activity counters reach the pg_stat views when it next goes idle, within 10 s (PostgreSQL
    // 15's idle flush); poll to a deadline.
    let upkeep_until = async |t: &TestStore, want: &str| -> herald::store::Upkeep {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let done = t.store.maintain().await.unwrap();
            if done.analyzed.iter().any(|n| n == want) || std::time::Instant::now() > deadline {
                return done;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let batch = |from: usize, n: usize| -> Vec<NewMessage> {
        (from..from + n)
            .map(|i| {
                common::new_message(
                    &format!("m{i:06}"),
                    "shop@example.test",
                    &["a@example.test"],
                    Bytes::from_static(b"Subject: x\r\n\r\nx\r\n"),
                )
            })
            .collect()
    };
    let counted = async |db: &mut sqlx::PgConnection, n: i64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while stat(db, "n_mod_since_analyze").await < n {
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL never counted the inserts"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    // 100 messages: past 50 changes, but a table of a few pages is left unanalyzed (planned as 10 pages).
    t.store.accept(batch(0, 100)).await.unwrap();
    counted(&mut db, 100).await;
    let done = t.store.maintain().await.unwrap();
    assert!(done.analyzed.is_empty(), "{done:?}");
    assert_eq!(stat(&mut db, "analyze_count").await, 0);
    t.store.accept(batch(100, 1_000)).await.unwrap();
    counted(&mut db, 1_100).await;
    let done = upkeep_until(&t, "messages").await;
    assert!(done.analyzed.iter().any(|n| n == "messages"), "{done:?}");
    let after_first = stat(&mut db, "analyze_count").await;
    // 60 more (5 %): under the threshold of 50 + 10 %, no new ANALYZE once PostgreSQL has counted them.
    t.store.accept(batch(1_100, 60)).await.unwrap();
    counted(&mut db, 60).await;
    let done = t.store.maintain().await.unwrap();
    assert!(!done.analyzed.iter().any(|n| n == "messages"), "{done:?}");
    assert_eq!(stat(&mut db, "analyze_count").await, after_first);
    // Past a tenth: analyzed again.
    t.store.accept(batch(1_160, 200)).await.unwrap();
    counted(&mut db, 260).await;
    let done = upkeep_until(&t, "messages").await;
    assert!(done.analyzed.iter().any(|n| n == "messages"), "{done:?}");
    assert!(stat(&mut db, "analyze_count").await > after_first);
}
