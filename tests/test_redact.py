from bench.tracking.redact import MASK, redact


def test_secret_keys_masked_env_names_kept(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-verysecretvalue123")
    cfg = {
        "explainer": {"llm": {"api_key_env": "OPENAI_API_KEY", "api_key": "sk-inline-secret", "model": "gpt-4o"}},
        "note": "call with sk-verysecretvalue123 inside",
        "max_tokens": 60,
    }
    out = redact(cfg)
    assert out["explainer"]["llm"]["api_key_env"] == "OPENAI_API_KEY"
    assert out["explainer"]["llm"]["api_key"] == MASK
    assert "sk-verysecretvalue123" not in out["note"]
    assert out["max_tokens"] == 60


def test_configured_key_variable_and_url_userinfo_are_masked_everywhere(monkeypatch):
    from bench.tracking.redact import redact_text, register_config

    monkeypatch.setenv("MY_PROXY_CRED", "proxy-canary-91c2e")  # not named like a secret
    register_config({"explainer": {"llm": {"api_key_env": "MY_PROXY_CRED", "base_url": "https://u:urlcanary99@h/v1"}}})
    text = "401: key proxy-canary-91c2e refused at https://u:urlcanary99@h/v1; pass=urlcanary99"
    clean = redact_text(text)
    assert "proxy-canary-91c2e" not in clean and "urlcanary99" not in clean
    assert "https://***@h/v1" in clean
    # results data under names that merely contain "token" is kept
    result = {"tokens": ["a", " b"], "max_tokens": 60, "token_ids": [1, 2], "hf_token": "hf_abcdefgh"}
    result["meta"] = {"tokens": [{"token": " the", "count": 2}]}  # the token-list explainer's evidence
    out = redact(result)
    assert out["tokens"] == ["a", " b"] and out["token_ids"] == [1, 2] and out["hf_token"] == MASK
    assert out["meta"]["tokens"] == [{"token": " the", "count": 2}]


def test_log_records_and_console_writes_are_redacted(monkeypatch, capsys):
    import logging
    import sys

    from bench.tracking.redact import install_log_redaction, redacted_console

    monkeypatch.setenv("NB_SOME_API_KEY", "sk-logcanary-5521")
    install_log_redaction()
    logger = logging.getLogger("x")
    record = logger.makeRecord("x", logging.ERROR, __file__, 1, "refused %s", ("sk-logcanary-5521",), None)
    assert record.getMessage() == "refused ***"
    with redacted_console():
        print("key sk-logcanary-5521")
        print("url http://user:pw-secret-value@host", file=sys.stderr)
    out, err = capsys.readouterr()
    assert out == "key ***\n" and err == "url http://***@host\n"


def test_batch_state_files_keep_no_url_userinfo(tmp_path):
    from bench.llm.batch import PendingStore

    store = PendingStore(tmp_path, "openai", "https://user:batchcanary77@proxy.example/v1")
    pending = store.save("batch_1", ["a" * 64], "openai/gpt-4o-mini", {})
    assert "batchcanary77" not in pending.path.read_text()
    assert [
        p.batch_id for p in PendingStore(tmp_path, "openai", "https://user:batchcanary77@proxy.example/v1").load()
    ] == ["batch_1"]
