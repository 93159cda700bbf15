"""The constitution workbench: see what each principle does to a model's answers before spending a round on it.

``cai constitution try CONSTITUTION -p PROMPTS`` runs a principles x prompts matrix:
per prompt the initial response, per cell (prompt, principle) one critique-then-revise
step, the revision quality gates' verdict, the judge's preference for the revision in
both orders, and the refusal detector's call on each text. ``cai constitution diff A B``
runs two versions side by side after a word diff of their texts. ``cai constitution
lint --model`` reports per-principle health from the same matrix.

It is a view over the declared stages, not a second pipeline: the conversations, the
sampling, the gates and the batching are those of ``cai.stages.revise``; the initial
response is ``cai.stages.responses.policy_conversation``; the preference is
``cai.judge.ConstitutionJudge``; refusals are ``cai.refusal.RefusalDetector``; rates
are ``cai.evaluation.outcome.rate`` (Wilson intervals).

Modules: ``selection`` (which principles and prompts), ``cache`` (the per-cell cache and
its keys), ``backend`` (a backend that loads only when a cell must be computed),
``matrix`` (the cells), ``figures`` and ``health`` (per-principle numbers and flags),
``diff`` (two versions), ``document`` (workbench.json), ``terminal`` and ``page`` (the
views). The workbench.json schema is documented in docs/workbench.md.
"""

from cai.workbench.backend import LazyBackend, model_identity
from cai.workbench.cache import CellCache
from cai.workbench.diff import constitution_diff, diff_principle_ids, run_diff
from cai.workbench.document import diff_document, try_document, write
from cai.workbench.matrix import Matrix, run_matrix
from cai.workbench.selection import gather_prompts, parse_principles, select_principles

__all__ = ["LazyBackend", "model_identity", "CellCache", "constitution_diff", "diff_principle_ids", "run_diff",
           "diff_document", "try_document", "write", "Matrix", "run_matrix", "gather_prompts", "parse_principles",
           "select_principles"]
