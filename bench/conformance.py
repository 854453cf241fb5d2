"""mypy's proof that every shipped component implements its contract in :mod:`bench.protocols`.

Protocols are structural: nothing is checked until a value meets an annotation, and the pipeline
gets its parts from Hydra as ``Any``.  Assigning each shipped class to its Protocol here makes
``mypy`` (``[tool.mypy]``, ``tests/test_types.py``) fail when a component drops or mistypes a member
the pipeline reads -- the static twin of the runtime check in :func:`bench.config.build_parts`.
Nothing here runs: the imports exist for the type checker only.  A new component adds one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.data.hf_datasets import HFDataset
    from bench.data.offline_default import OfflineCorpus
    from bench.data.reference_records import ReferenceRecords
    from bench.data.text_files import TextFiles
    from bench.explainers.best_of_k import BestOfKExplainer
    from bench.explainers.llm_explainer import LLMExplainer
    from bench.explainers.token_list import TokenListExplainer
    from bench.llm.anthropic_backend import AnthropicModel
    from bench.llm.fake import FakeLLM
    from bench.llm.local_transformers import LocalChatModel
    from bench.llm.openai_backend import OpenAIChatModel
    from bench.protocols import (
        ContextLimited,
        CountsCalls,
        Dataset,
        Explainer,
        LLMClient,
        PaidAPI,
        PlansExplanations,
        PlansSimulations,
        ReadyCheck,
        RecordSource,
        Reranks,
        SamplingTemperature,
        Scorer,
        Simulator,
        Sink,
        SlotTopK,
        SourceMining,
        Subject,
        TemperatureLimited,
        TokenCounting,
        WrapsExplainer,
    )
    from bench.scorers.ablation import AblationScorer
    from bench.scorers.correlation import CorrelationScorer
    from bench.scorers.detection import DetectionScorer
    from bench.scorers.embedding import EmbeddingScorer
    from bench.scorers.fuzzing import FuzzingScorer
    from bench.scorers.judge_noise import JudgeNoiseScorer
    from bench.scorers.output_centric import OutputCentricScorer
    from bench.simulators.all_at_once import AllAtOnceSimulator
    from bench.simulators.embedding import EmbeddingProxySimulator
    from bench.simulators.one_at_a_time import OneAtATimeSimulator
    from bench.simulators.proxy import LexicalProxySimulator
    from bench.subject.transformers_subject import TransformersSubject
    from bench.tracking.jsonl import JsonlSink
    from bench.tracking.mlflow_sink import MlflowSink


def _llm_clients(fake: FakeLLM, local: LocalChatModel, openai: OpenAIChatModel, anthropic: AnthropicModel) -> None:
    clients: list[LLMClient] = [fake, local, openai, anthropic]
    ready: list[ReadyCheck] = [openai, anthropic]
    paid: list[PaidAPI] = [openai, anthropic]
    counted: list[CountsCalls] = [openai, anthropic]
    windows: list[ContextLimited] = [fake, local, openai]
    counting: list[TokenCounting] = [local, openai]
    top_k: list[SlotTopK] = [openai]
    ranged: list[TemperatureLimited] = [anthropic]
    del clients, ready, paid, counted, windows, counting, top_k, ranged


def _method_components(
    llm: LLMExplainer,
    best_of_k: BestOfKExplainer,
    token_list: TokenListExplainer,
    all_at_once: AllAtOnceSimulator,
    one_at_a_time: OneAtATimeSimulator,
    lexical: LexicalProxySimulator,
    embedding: EmbeddingProxySimulator,
) -> None:
    explainers: list[Explainer] = [llm, best_of_k, token_list]
    wrapping: list[WrapsExplainer] = [best_of_k]
    reranking: list[Reranks] = [best_of_k]
    planned_explanations: list[PlansExplanations] = [llm]
    simulators: list[Simulator] = [all_at_once, one_at_a_time, lexical, embedding]
    planned_simulations: list[PlansSimulations] = [all_at_once, one_at_a_time]
    sampling: list[SamplingTemperature] = [llm, all_at_once, one_at_a_time]
    del explainers, wrapping, reranking, planned_explanations, simulators, planned_simulations, sampling


def _scorers(
    ablation: AblationScorer,
    correlation: CorrelationScorer,
    detection: DetectionScorer,
    embedding: EmbeddingScorer,
    fuzzing: FuzzingScorer,
    judge_noise: JudgeNoiseScorer,
    output_centric: OutputCentricScorer,
) -> None:
    scorers: list[Scorer] = [ablation, correlation, detection, embedding, fuzzing, judge_noise, output_centric]
    del scorers


def _data_and_subjects(
    offline: OfflineCorpus,
    text_files: TextFiles,
    hf: HFDataset,
    reference: ReferenceRecords,
    subject: TransformersSubject,
    jsonl: JsonlSink,
    mlflow: MlflowSink,
) -> None:
    datasets: list[Dataset] = [offline, text_files, hf, reference]
    record_sources: list[RecordSource] = [reference]
    subjects: list[Subject] = [subject]
    mining: list[SourceMining] = [subject]
    sinks: list[Sink] = [jsonl, mlflow]
    del datasets, record_sources, subjects, mining, sinks
