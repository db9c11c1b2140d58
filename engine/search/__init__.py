"""Design search (above :mod:`engine.train`, below :mod:`engine.cli`): propose TN layer designs with Optuna, price
each with the cost model before any training, train the feasible ones briefly, and report the Pareto front of
validation accuracy against size.

- :mod:`~engine.search.space`: :class:`LayerSpace` (kinds, leg factorisations, bond dimensions uniform or per
  bond, activations, template options) and its :class:`Candidate` designs;
- :mod:`~engine.search.budget`: :class:`Budget` (max params, forward FLOPs and training memory at a batch) and
  the :class:`Feasibility` of a design, from :func:`engine.contract.cost.cost_report`;
- :mod:`~engine.search.spec`: :class:`SearchSpec`, the whole search, stored inside its Optuna study;
- :mod:`~engine.search.objective`: one trial (price, prune, train in the run store, prune on accuracy through a
  per-size companion study);
- :mod:`~engine.search.storage`: the embedded journal (default) or an RDB URL (PostgreSQL, for many machines);
- :mod:`~engine.search.worker`: a worker process (``python -m engine.search``), dead-worker recovery;
- :mod:`~engine.search.study`: create / continue, start workers, stop;
- :mod:`~engine.search.report`: :class:`StudyReport` (trials, front, best per kind, pruned counts).

Depends on :mod:`engine.design`, :mod:`engine.contract` and :mod:`engine.train`; imports neither torch nor optuna
at module level.
"""
from engine.search.budget import Budget, Feasibility
from engine.search.report import StudyReport, TrialRecord, study_report
from engine.search.space import Candidate, LayerSpace, SpaceError
from engine.search.spec import SearchSpec, SpecError
from engine.search.storage import StorageError, list_studies
from engine.search.study import create_search, open_search, resume_search, run_search, start_workers, stop_search

__all__ = ["Budget", "Candidate", "Feasibility", "LayerSpace", "SearchSpec", "SpaceError", "SpecError",
           "StorageError", "StudyReport", "TrialRecord", "create_search", "list_studies", "open_search",
           "resume_search", "run_search", "start_workers", "stop_search", "study_report"]
