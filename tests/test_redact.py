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
