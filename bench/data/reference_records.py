"""Published unit records read from files instead of mined: ``dataset=reference_records``.

The reference's public data is one ``NeuronRecord`` JSON per neuron under
``collated-activations/{layer}/{neuron}.json`` (method.md section 8).  This "dataset" yields those
records as :class:`~bench.records.UnitRecord` s directly -- no corpus, no subject forward pass -- so
``explainer=reference_files`` (or any explainer) is scored on exactly the published excerpts.

Units are chosen as for mined ones (``units.layers``, ``units.count`` / ``units.indices``, ``units.seed``)
among the neuron files present in each layer's folder (a partial download is fine).  The records carry
token strings only, no token ids of a subject: scorers that run the subject model (ablation,
output-centric) are refused at config time.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError, UserError
from bench.records import UnitRecord

_NEURON_FILE = re.compile(r"^(\d+)\.json$")


@dataclass(frozen=True)
class ReferenceRecords:
    """``root`` holds ``{layer}/{neuron}.json`` ``NeuronRecord`` files (a ``collated-activations`` folder)."""

    root: str
    name: str = "reference_records"
    version: int = 1
    # The Dataset protocol's sizes: the files decide both (GPT-2 XL: 64-token excerpts).
    n_excerpts: int = 0
    excerpt_len: int = 64

    # bench.protocols.RecordSource (check_units, unit_records): the pipeline reads records here instead of mining

    def __post_init__(self) -> None:
        if not Path(self.root).expanduser().is_dir():
            raise ValueError(
                f"root: no such directory {self.root!r} (the collated-activations folder holding <layer>/<neuron>.json)"
            )

    @property
    def folder(self) -> Path:
        return Path(self.root).expanduser()

    def excerpts(self, tokenizer: Any, seed: int) -> Any:
        raise UserError(
            "dataset=reference_records holds unit records, not a text corpus; pick a text dataset for this stage"
        )

    def neurons(self, layer: int) -> list[int]:
        """Neuron indices with a file in ``root/{layer}/``, ascending."""
        folder = self.folder / str(layer)
        if not folder.is_dir():
            return []
        found = (_NEURON_FILE.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def read(self, layer: int, neuron: int) -> tuple[UnitRecord, str]:
        """The record in ``root/{layer}/{neuron}.json`` and the file's sha256 (recorded as provenance)."""
        from bench.reference_format import unit_record_from_reference

        path = self.folder / str(layer) / f"{neuron}.json"
        try:
            blob = path.read_bytes()
            record = unit_record_from_reference(json.loads(blob))
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = f"{type(err).__name__}: {err}"
            raise UserError(f"dataset.root: cannot read a NeuronRecord from {path}: {problem}") from None
        if (record.unit.layer, record.unit.index) != (layer, neuron):
            raise UserError(
                f"dataset.root: {path} holds neuron {record.unit.layer}/{record.unit.index}, not {layer}/{neuron}"
            )
        return record, hashlib.sha256(blob).hexdigest()

    def check_units(self, units: Any) -> None:
        """Every requested layer, index and count has files (one line naming the key; no file is read)."""
        self.chosen(units)

    def chosen(self, units: Any) -> dict[int, list[int]]:
        """Layer -> the neurons to read: ``units.indices``, or ``units.count`` sampled among the files."""
        from bench.pipeline import choose_units

        out: dict[int, list[int]] = {}
        for layer in units.layers:
            available = self.neurons(layer)
            if not available:
                raise ConfigError(
                    "units.layers", f"layer {layer} has no <neuron>.json files under {self.folder / str(layer)}"
                )
            if units.indices is not None:
                missing = [i for i in units.indices if i not in set(available)]
                if missing:
                    raise ConfigError(
                        "units.indices",
                        f"no published record for neurons {missing} of layer {layer} under {self.folder / str(layer)} "
                        f"({len(available)} files there)",
                    )
                chosen = list(dict.fromkeys(units.indices))
            else:
                if units.count > len(available):
                    raise ConfigError(
                        "units.count",
                        f"{units.count} exceeds the {len(available)} records of layer {layer} under {self.folder}",
                    )
                picks = choose_units(layer, len(available), units.count, None, units.seed)
                chosen = [available[p] for p in picks]
            out[layer] = chosen
        return out

    def unit_records(self, units: Any) -> tuple[dict[str, UnitRecord], dict[str, Any]]:
        """The chosen units' published records and their provenance (the folder and files' sha256)."""
        records: dict[str, UnitRecord] = {}
        files: dict[str, str] = {}
        for layer, chosen in self.chosen(units).items():
            for neuron in chosen:
                rec, sha = self.read(layer, neuron)
                records[rec.unit.key] = rec
                files[rec.unit.key] = sha
        provenance = {
            "records": {"source": self.name, "root": str(self.folder.resolve()), "sha256": files},
        }
        return records, provenance
