"""Property tests of the pure cleanup planner on random lineages (no disk)."""

from __future__ import annotations

import os
import random
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graftline.engine.lineage.cleanup import CleanupError, KeepRule, parse_keep, plan_cleanup
from graftline.engine.lineage.model import Edge, Lineage, LoraInfo, Node

RELATIONS = ("trained_on", "continued_from", "merged_from", "combined_from", "exported_from")
DISK_KINDS = ("base", "adapter", "merged", "combined", "export", "trainer")
ROOT = "/r"


# Fast by default; CI may ask for more: GRAFTLINE_HYPOTHESIS=ci runs 10,000 cases.
settings.register_profile("default", max_examples=800, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GRAFTLINE_HYPOTHESIS", "default"))

POLICIES = ("final", "last:1", "last:3", "best:loss", "best:eval/accuracy")
TYPOS = ("best:los", "best:eval_los", "fnal", "n1x", "stage3_dop", "runs/*/nothing*", "id:zz")


def build_case(n: int, seed: int) -> tuple[Lineage, list[KeepRule]]:
    """A random lineage of `n` nodes and keep rules (typos included), from `seed`.

    Drawn from one seed (not node by node through hypothesis) so thousands of cases run in
    seconds; a failing (n, seed) pair reproduces exactly.
    """
    rnd = random.Random(seed)
    nodes: list[Node] = []
    edges: list[Edge] = []
    for i in range(n):
        kind = rnd.choice((*DISK_KINDS, *DISK_KINDS, "external", "missing"))
        in_roots = kind in DISK_KINDS and rnd.random() < 0.85
        # Nest some checkpoints inside earlier ones (checkpoint-N under a stage directory).
        holder = nodes[rnd.randrange(i)] if i and rnd.random() < 0.4 else None
        if in_roots:
            prefix = holder.path if holder and holder.in_roots and holder.path else ROOT
            leaf = rnd.choice((f"n{i}", f"n{i}", "final")) if kind != "trainer" else f"n{i}"
            path = f"{prefix}/{leaf}" if leaf != "final" else f"{prefix}/n{i}/final"
        else:
            path = f"/elsewhere/n{i}"
        run = rnd.choice((None, "runA", "runB"))
        metrics = {}
        if rnd.random() < 0.5:
            metrics["loss"] = rnd.random()
        if rnd.random() < 0.2:
            metrics["eval/accuracy"] = rnd.random()
        nodes.append(Node(
            key=path, id=f"n{i}", kind=kind, name=os.path.basename(path), path=path,
            bytes=rnd.randrange(10**9), created=f"2026-01-01T00:00:{i:02d}",
            run=run, run_dir=f"{ROOT}/{run}" if run else None,
            stage=rnd.choice((None, f"s{i % 3}")) if run else None,
            step=rnd.randrange(1, 500) if kind == "trainer" else None,
            metrics=metrics,
            lora=LoraInfo(8, 16) if kind == "adapter" else None,
            status=rnd.choice(("complete", "partial", "complete", "corrupt")),
            in_roots=in_roots,
            running=in_roots and rnd.random() < 0.08,
        ))
        for j in rnd.sample(range(i), k=min(i, rnd.randrange(4))):
            edges.append(Edge(path, nodes[j].key, rnd.choice(RELATIONS)))
    lineage = Lineage(roots=(ROOT,), nodes=tuple(nodes), edges=tuple(edges))
    on_disk = [nd for nd in nodes if nd.in_roots and nd.kind in DISK_KINDS]
    rules = [KeepRule("ref", nd.key, value=nd.key)
             for nd in rnd.sample(on_disk, k=min(len(on_disk), rnd.randrange(5)))]
    rules += [parse_keep(w) for w in rnd.sample(POLICIES, k=rnd.randrange(3))]
    if rnd.random() < 0.3:
        rules.append(parse_keep(rnd.choice(TYPOS)))
    rnd.shuffle(rules)
    return lineage, rules or [parse_keep("final")]


def selects_nothing(rule: KeepRule, lineage: Lineage) -> bool:
    """Whether `rule` selects nothing, decided here from the nodes (not by the planner)."""
    on_disk = [nd for nd in lineage.nodes if nd.in_roots and nd.kind in DISK_KINDS]
    if rule.kind == "ref":
        return not any(rule.value in (nd.key, nd.id, nd.name) for nd in on_disk)
    if rule.kind in ("id", "glob"):
        return True  # the typo words name nothing in these trees
    if rule.kind == "final":
        return not any(nd.kind != "trainer" for nd in on_disk)
    if rule.kind == "last":
        return not any(nd.kind == "trainer" and nd.status != "corrupt" for nd in on_disk)
    return not any(rule.value in nd.metrics and nd.status != "corrupt" for nd in on_disk)


def plan_or_refusal(lineage: Lineage, rules: list[KeepRule], **kw: str) -> object:
    empty = [r for r in rules if selects_nothing(r, lineage)]
    try:
        plan = plan_cleanup(lineage, rules, **kw)
    except CleanupError as exc:
        # A keep set with a word that selects nothing is refused whole: nothing is deleted.
        assert empty, f"refused although every word selects something: {exc}"
        assert "Nothing was deleted" in str(exc) or "selects nothing" in str(exc)
        return None
    assert not empty, f"{[r.text for r in empty]} select nothing but the plan went ahead"
    assert plan.keep  # a plan that deletes always keeps what its words selected
    return plan


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_plan_invariants(n: int, seed: int) -> None:
    lineage, rules = build_case(n, seed)
    plan = plan_or_refusal(lineage, rules)
    if plan is None:
        return
    delete = set(plan.delete)
    keep, protected, refused = set(plan.keep), set(plan.protected), set(plan.refused)
    candidates = {n.key for n in lineage.nodes if n.in_roots and n.kind in DISK_KINDS}

    # No kept (or running) checkpoint loses anything in its base chain.
    for key in keep | refused:
        assert not delete & set(lineage.needs(key)), key
    # A merged model's parents: both protected, or neither (never the base without the adapter).
    for key in keep | protected | refused:
        merged_from = [e.parent for e in lineage.parents(key) if e.relation == "merged_from"]
        assert not delete & set(merged_from) or not (set(merged_from) - delete), key
    # `final` keeps every `final/` folder, and last:N never deletes a stage result.
    words = {r.text for r in rules}
    for node in lineage.nodes:
        if node.key in candidates and node.kind != "trainer":
            if "final" in words and node.name == "final":
                assert node.key in keep
            if any(w.startswith("last:") for w in words) and (
                    node.name == "final" or (node.stage and node.step is None)):
                assert node.key not in delete
    # The sets never overlap and together cover every checkpoint in the roots.
    assert not delete & protected
    assert not delete & keep
    assert not delete & refused
    assert not protected & keep
    assert delete | keep | protected | refused == candidates
    # An export is never deleted unless named (--delete-export), whatever the keep words.
    assert not any(lineage.node(k).kind == "export" for k in delete)
    # Nothing outside the roots, and no running checkpoint, is ever deleted.
    assert all(lineage.node(k).in_roots and not lineage.node(k).running for k in delete)
    # Bytes add up.
    total = sum(lineage.node(k).bytes for k in candidates)
    assert plan.bytes_reclaimed == sum(lineage.node(k).bytes for k in delete)
    assert plan.bytes_reclaimed + plan.bytes_remaining == total
    # A checkpoint nested in a deleted one stays on disk when it is not deleted itself.
    for key in delete:
        inner = {n.path for n in lineage.nodes
                 if n.path and n.key not in delete and n.path.startswith(key + "/")}
        assert inner == set(plan.leave.get(key, ()))
    # Deepest first, so a nested deleted checkpoint goes before its parent directory.
    depths = [k.count("/") for k in plan.delete]
    assert depths == sorted(depths, reverse=True)


@given(st.integers(1, 40), st.integers(0, 2**32))
def test_between_its_own_stages_an_engine_touches_only_its_own_run(n: int, seed: int) -> None:
    lineage, rules = build_case(n, seed)
    own = f"{ROOT}/runA"
    plan = plan_or_refusal(lineage, rules, own_run=own)
    if plan is None:
        return
    delete = set(plan.delete)
    for key in set(plan.keep) | set(plan.refused):
        assert not delete & set(lineage.needs(key)), key
    for key in delete:
        node = lineage.node(key)
        assert node.in_roots
        assert not node.running or node.run_dir == own  # another live run is never touched
    # Its own checkpoints are not refused as a running run's; every other live one is.
    assert all(lineage.node(k).run_dir != own for k in plan.refused)
    running_elsewhere = {nd.key for nd in lineage.nodes if nd.running and nd.run_dir != own
                         and nd.in_roots and nd.kind in DISK_KINDS and nd.key not in plan.keep}
    assert running_elsewhere <= set(plan.refused)


def _chain() -> Lineage:
    base = Node(key="/r/base", id="base", kind="base", name="base", path="/r/base")
    sft1 = Node(key="/r/run/stages/sft1", id="s1", kind="adapter", name="sft1",
                path="/r/run/stages/sft1", run="run", run_dir="/r/run", bytes=10)
    merged = Node(key="/r/run/stages/merged1", id="m1", kind="merged", name="merged1",
                  path="/r/run/stages/merged1", run="run", run_dir="/r/run", bytes=1000)
    sft2 = Node(key="/r/run/stages/sft2", id="s2", kind="adapter", name="sft2",
                path="/r/run/stages/sft2", run="run", run_dir="/r/run", bytes=20)
    dpo = Node(key="/r/run/stages/stage3_dpo", id="d3", kind="adapter", name="stage3_dpo",
               path="/r/run/stages/stage3_dpo", run="run", run_dir="/r/run", bytes=20,
               created="2026-01-02")
    edges = (
        Edge(sft1.key, base.key, "trained_on"),
        Edge(merged.key, sft1.key, "merged_from"),
        Edge(merged.key, base.key, "merged_from"),
        Edge(sft2.key, merged.key, "trained_on"),
        Edge(dpo.key, merged.key, "trained_on"),
        Edge(dpo.key, sft2.key, "continued_from"),
    )
    return Lineage(roots=("/r",), nodes=(base, sft1, merged, sft2, dpo), edges=edges)


def test_reasons_name_the_kept_checkpoint() -> None:
    lineage = _chain()
    plan = plan_cleanup(lineage, [parse_keep("stage3_dpo")])
    assert plan.protected["/r/run/stages/merged1"] == (
        "merged1 is the base of stage3_dpo, which you keep",
    )
    assert plan.protected["/r/base"][0].endswith("which stage3_dpo (kept) needs")
    assert plan.protected["/r/run/stages/sft1"] == (
        "sft1 was merged into merged1, which stage3_dpo (kept) needs",
    )
    # continued_from is provenance: the DPO adapter's weights hold everything of sft2.
    assert plan.delete == ("/r/run/stages/sft2",)
    assert plan.bytes_reclaimed == 20


def test_final_keeps_the_newest_checkpoint_of_each_run() -> None:
    plan = plan_cleanup(_chain(), [parse_keep("final")])
    assert set(plan.keep) == {"/r/run/stages/stage3_dpo"}


@pytest.mark.parametrize("word", ["last:0", "last:x", "best:", "best:loss:up", ""])
def test_bad_keep_words_are_refused(word: str) -> None:
    with pytest.raises(CleanupError):
        parse_keep(word)


def test_a_typo_never_means_delete_everything() -> None:
    with pytest.raises(CleanupError, match="did you mean stage3_dpo"):
        plan_cleanup(_chain(), [parse_keep("stage3_dop")])
    with pytest.raises(CleanupError, match="say what to keep"):
        plan_cleanup(_chain(), [])


def test_a_metric_typo_is_refused_with_the_metrics_that_exist() -> None:
    chain = _chain()
    nodes = tuple(n if n.name != "stage3_dpo" else replace(n, metrics={"eval_loss": 0.5})
                  for n in chain.nodes)
    lineage = Lineage(roots=chain.roots, nodes=nodes, edges=chain.edges)
    with pytest.raises(CleanupError, match="did you mean best:eval_loss") as exc:
        plan_cleanup(lineage, [parse_keep("final"), parse_keep("best:eval_los")])
    assert "Nothing was deleted" in str(exc.value)
    plan = plan_cleanup(lineage, [parse_keep("best:eval_loss")])
    assert set(plan.keep) == {"/r/run/stages/stage3_dpo"}


def test_parse_keep_forms() -> None:
    assert parse_keep("best:eval/loss").mode == "min"
    assert parse_keep("best:eval/accuracy").mode == "max"
    assert parse_keep("best:reward:min").mode == "min"
    assert parse_keep("runs/*/stages/dpo*").kind == "glob"
    assert parse_keep("id:abc").value == "abc"
    assert parse_keep("last:2").count == 2
