"""The one table that maps OpenFL template names to fedrun classes.

An OpenFL plan names classes such as ``openfl.component.aggregator.Aggregator``; fedrun resolves
each to its own class here, so a plan written for OpenFL 1.6-1.9 runs unchanged.
"""

from __future__ import annotations

_AGG = "fedrun.aggregation"
_CMP = "fedrun.compression"
_FED = "fedrun.federation"

#: OpenFL (or short fedrun) name -> fedrun dotted class path
ALIASES: dict[str, str] = {
    # components
    "openfl.component.Aggregator": f"{_FED}.aggregator.Aggregator",
    "openfl.component.aggregator.Aggregator": f"{_FED}.aggregator.Aggregator",
    "openfl.component.aggregator.aggregator.Aggregator": f"{_FED}.aggregator.Aggregator",
    "openfl.component.Collaborator": f"{_FED}.collaborator.Collaborator",
    "openfl.component.collaborator.Collaborator": f"{_FED}.collaborator.Collaborator",
    "openfl.component.collaborator.collaborator.Collaborator": f"{_FED}.collaborator.Collaborator",
    "openfl.federation.Network": "fedrun.transport.network.Network",
    # assigners
    "openfl.component.RandomGroupedAssigner": f"{_FED}.assigner.RandomGroupedAssigner",
    "openfl.component.assigner.RandomGroupedAssigner": f"{_FED}.assigner.RandomGroupedAssigner",
    "openfl.component.assigner.random_grouped_assigner.RandomGroupedAssigner": f"{_FED}.assigner.RandomGroupedAssigner",
    "openfl.component.StaticGroupedAssigner": f"{_FED}.assigner.StaticGroupedAssigner",
    "openfl.component.assigner.StaticGroupedAssigner": f"{_FED}.assigner.StaticGroupedAssigner",
    "openfl.component.assigner.static_grouped_assigner.StaticGroupedAssigner": f"{_FED}.assigner.StaticGroupedAssigner",
    # straggler policies (1.7+ names and 1.6 names)
    "openfl.component.aggregator.straggler_handling.WaitForAllPolicy": f"{_FED}.stragglers.WaitForAllPolicy",
    "openfl.component.aggregator.straggler_handling.CutoffTimePolicy": f"{_FED}.stragglers.CutoffTimePolicy",
    "openfl.component.aggregator.straggler_handling.PercentagePolicy": f"{_FED}.stragglers.PercentagePolicy",
    "openfl.component.NoPolicy": f"{_FED}.stragglers.WaitForAllPolicy",
    "openfl.component.WaitForAllPolicy": f"{_FED}.stragglers.WaitForAllPolicy",
    "openfl.component.CutoffTimeBasedStragglerHandling": f"{_FED}.stragglers.CutoffTimePolicy",
    "openfl.component.PercentageBasedStragglerHandling": f"{_FED}.stragglers.PercentagePolicy",
    "openfl.component.straggler_handling_functions.CutoffTimeBasedStragglerHandling": f"{_FED}.stragglers.CutoffTimePolicy",
    "openfl.component.straggler_handling_functions.PercentageBasedStragglerHandling": f"{_FED}.stragglers.PercentagePolicy",
    # compression pipelines
    "openfl.pipelines.NoCompressionPipeline": f"{_CMP}.NoCompressionPipeline",
    "openfl.pipelines.RandomShiftPipeline": f"{_CMP}.RandomShiftPipeline",
    "openfl.pipelines.STCPipeline": f"{_CMP}.STCPipeline",
    "openfl.pipelines.SKCPipeline": f"{_CMP}.SKCPipeline",
    "openfl.pipelines.KCPipeline": f"{_CMP}.KCPipeline",
    # task runners and loaders
    "openfl.federated.PyTorchTaskRunner": "fedrun.runners.torch.PyTorchTaskRunner",
    "openfl.federated.task.runner_pt.PyTorchTaskRunner": "fedrun.runners.torch.PyTorchTaskRunner",
    "openfl.federated.KerasTaskRunner": "fedrun.runners.keras.KerasTaskRunner",
    "openfl.federated.task.runner_keras.KerasTaskRunner": "fedrun.runners.keras.KerasTaskRunner",
    "openfl.federated.DataLoader": "fedrun.data.loader.DataLoader",
    "openfl.utilities.optimizers.torch.FedProxOptimizer": "fedrun.runners.fedprox.FedProxOptimizer",
    "openfl.utilities.optimizers.torch.FedProxAdam": "fedrun.runners.fedprox.FedProxAdam",
    "openfl.federated.data.loader.DataLoader": "fedrun.data.loader.DataLoader",
    "openfl.federated.PyTorchDataLoader": "fedrun.data.loader.DataLoader",
    "openfl.federated.KerasDataLoader": "fedrun.data.loader.DataLoader",
}

_AGG_FUNCTIONS = (
    "WeightedAverage",
    "Median",
    "GeometricMedian",
    "FedCurvWeightedAverage",
    "AdagradAdaptiveAggregation",
    "AdamAdaptiveAggregation",
    "YogiAdaptiveAggregation",
)
for _name in _AGG_FUNCTIONS:
    ALIASES[f"openfl.interface.aggregation_functions.{_name}"] = f"{_AGG}.{_name}"

#: Short names usable in fedrun plans (``template: WeightedAverage``)
SHORT_NAMES: dict[str, str] = {
    **{name: f"{_AGG}.{name}" for name in (*_AGG_FUNCTIONS, "TrimmedMean", "Krum", "MultiKrum")},
    **{
        name: f"{_CMP}.{name}"
        for name in (
            "NoCompressionPipeline",
            "RandomShiftPipeline",
            "STCPipeline",
            "SKCPipeline",
            "KCPipeline",
        )
    },
    "RandomGroupedAssigner": f"{_FED}.assigner.RandomGroupedAssigner",
    "StaticGroupedAssigner": f"{_FED}.assigner.StaticGroupedAssigner",
    "WaitForAllPolicy": f"{_FED}.stragglers.WaitForAllPolicy",
    "CutoffTimePolicy": f"{_FED}.stragglers.CutoffTimePolicy",
    "PercentagePolicy": f"{_FED}.stragglers.PercentagePolicy",
    "CutoffTimeBasedStragglerHandling": f"{_FED}.stragglers.CutoffTimePolicy",
    "PercentageBasedStragglerHandling": f"{_FED}.stragglers.PercentagePolicy",
}


def resolve_template(name: str) -> str:
    """Return the fedrun dotted path for ``name`` (unchanged when it is not an alias)."""
    name = name.strip()
    if name in ALIASES:
        return ALIASES[name]
    if name in SHORT_NAMES:
        return SHORT_NAMES[name]
    if name.startswith("openfl."):
        tail = name.rsplit(".", 1)[-1]
        if tail in SHORT_NAMES:
            return SHORT_NAMES[tail]
    return name
