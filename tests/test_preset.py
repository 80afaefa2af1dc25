"""The CPU preset is a layer: the paper recipe meets none of it, the preset applies all of it explicitly, and a
checkpoint carries it (train_config.json) to train_ppr.py and evaluate.py."""

import dataclasses
import json

import pytest

import evaluate
import train_grpo
import train_ppr
from agenticrec import preset, trainer
from agenticrec.agent import AgentConfig, user_message
from agenticrec.data import Instance
from agenticrec.tasks import LESS, MORE
from agenticrec.preset import PresetToolbox, tool_ordering_scorer
from agenticrec.sasrec import TrainConfig
from agenticrec.warmstart import ordering_line, ordering_of
from agenticrec.tools import TOOLS, Toolbox, ToolContext
from test_tools import CTX, FakeSASRec, tiny

RANKING_CALLS = {"candidates_analyze": {}, "get_session_behavior": {},
                 "get_similar_items": {"item_title": "Mario Kart 8"}, "get_similar_users": {}}


@pytest.fixture(scope="module")
def boxes():
    return Toolbox(tiny(), FakeSASRec()), PresetToolbox(tiny(), FakeSASRec())


# ------------------------------------------------------------------------------------------------------------------
# Ordering lines exist only under the preset
# ------------------------------------------------------------------------------------------------------------------


def test_the_preset_appends_each_ranking_tools_order_to_the_same_evidence(boxes):
    paper, layered = boxes
    # popularity (train counts) of the candidates 3 5 6 2 4: 1 1 0 2 1 -> 4, then 1 2 5 (ties: lower number), 3.
    # similarity to Mario Kart 8 (candidate 4 itself first): 1.00 0.97 0.71 0.60 0.00 -> 4 1 5 2 3.
    # ann's taste = mean of her history's vectors, proportional to (3.2, 1.6, 0.3); cosine to the candidates'
    # items: 0.55 0.33 0.08 0.45 0.95 -> 5 1 4 2 3.
    # co-occurrence: how often each candidate sits within 3 positions of a history item (0 1 7 4 2) in the train
    # sequences (ann 0 1 7 4 2, bob 2 3 5 0, cat 0 7 1): item 3 next to 2 and 0 in bob's: 2; item 5 likewise: 2;
    # item 6 never: 0; item 2 next to 1 7 4 (ann) and 0 (bob): 4; item 4 next to 0 1 7 2 (ann): 4 -> 4 and 5 tied
    # (popularity 2 over 1: 4 first), 1 and 2 tied (popularity 1 and 1: lower number first), 3.
    expected = {"candidates_analyze": "Candidates by popularity, best first: 4, 1, 2, 5, 3",
                "get_session_behavior": "Candidates by co-occurrence with the history, best first: 4, 5, 1, 2, 3",
                "get_similar_items": "Candidates by similarity, best first: 4, 1, 5, 2, 3",
                "get_similar_users": "Candidates by similar users' taste, best first: 5, 1, 4, 2, 3"}
    for name, arguments in RANKING_CALLS.items():
        evidence = paper.call(name, arguments, CTX).text
        assert layered.call(name, arguments, CTX).text == evidence + "\n" + expected[name]
        assert ordering_of(evidence) is None


def test_the_ordering_line_orders_by_every_tool_consulted_so_far_whatever_the_call_order(boxes):
    _, box = boxes
    session, users, popularity = ("get_session_behavior", {}), ("get_similar_users", {}), ("candidates_analyze", {})
    line = lambda name, earlier: box.call(name, {}, CTX, earlier).text.rsplit("\n", 1)[1]
    # co-occurrence 2 2 0 4 4 decides; its ties {4, 5} and {1, 2} go to the taste order 5 1 4 2 3: 5 4, then 1 2
    merged = "Candidates by co-occurrence with the history, then similar users' taste, best first: 5, 4, 1, 2, 3"
    assert line("get_similar_users", (session,)) == line("get_session_behavior", (users,)) == merged
    assert line("candidates_analyze", (users, session)) == merged.replace("taste,", "taste, then popularity,")
    # a repeated tool counts once, a tool without an ordering not at all
    assert line("get_similar_users", (users, ("get_user_profile", {}))) == line("get_similar_users", ())
    # co-occurrence decides, popularity 1 1 0 2 1 breaks its ties: 4 (2) before 5 (1); 1 and 2 (1, 1) by number
    assert line("get_session_behavior", (popularity,)) == (
        "Candidates by co-occurrence with the history, then popularity, best first: 4, 5, 1, 2, 3")


def test_an_ab_question_ends_with_its_options_by_the_same_order_the_one_to_answer_first(boxes):
    """Options A = item 3, B = item 2 (candidates 1 and 4 of CTX). Co-occurrence: item 3 2, item 2 4 -> B first;
    taste: item 3 0.55, item 2 0.45 -> A first; co-occurrence then taste: the counts decide -> B first. LESS
    reverses each. The evidence before the line is the paper's."""
    paper, box = boxes
    session = ("get_session_behavior", {})
    expected = [("get_session_behavior", (), "co-occurrence with the history", "{B}, {A}", "{A}, {B}"),
                ("get_similar_users", (), "similar users' taste", "{A}, {B}", "{B}, {A}"),
                ("get_similar_users", (session,), "co-occurrence with the history, then similar users' taste",
                 "{B}, {A}", "{A}, {B}")]
    for name, earlier, criterion, more, less in expected:
        for direction, letters in ((MORE, more), (LESS, less)):
            ctx = dataclasses.replace(CTX, candidates=(3, 2), direction=direction)
            assert box.call(name, {}, ctx, earlier).text == (
                paper.call(name, {}, ctx).text + f"\nOptions by {criterion}, {direction} likely first:\n" + letters)


def test_the_session_tools_order_alone_is_the_cooccurrence_baselines(boxes):
    from agenticrec.baselines import cooccurrence_scorer, rankings
    _, box = boxes
    contexts = [CTX, ToolContext("bob", (2, 3, 5, 0), (1, 4, 6, 7, 0)), ToolContext("cat", (0, 7, 1), (2, 6, 3))]
    for ctx in contexts:
        x = Instance(ctx.user, list(ctx.history), ctx.candidates[0], list(ctx.candidates))
        [ranked] = rankings([x], cooccurrence_scorer(box.data)([x]), box.popularity)
        order = ordering_of(box.call("get_session_behavior", {}, ctx).text)
        assert [ctx.candidates[n - 1] for n in order] == ranked


def test_without_the_preset_no_tool_output_holds_an_ordering_line(boxes):
    paper, _ = boxes
    arguments = {"item_info_search": {"item_name": "Halo 3"}, **RANKING_CALLS}
    contexts = [CTX, ToolContext("bob", (2, 3, 5, 0), (1, 4, 6, 7, 0)), ToolContext("cat", (0, 7, 1), (2, 6, 3))]
    for context in contexts:
        for tool in TOOLS:
            text = paper.call(tool.name, arguments.get(tool.name, {}), context).text
            assert "best first:" not in text and ordering_of(text) is None, (tool.name, text)


def test_the_paper_recipe_builds_the_paper_toolbox_and_the_full_titles():
    data = tiny()
    assert preset.toolbox_class(None) is Toolbox and preset.prompt_data(data, None) is data
    layer = preset.layer("runs/x/preset/warm_start")
    assert preset.toolbox_class(layer) is PresetToolbox
    short = preset.prompt_data(data, {**layer, "title_chars": 8})
    assert short.title(4) == "Forza H…" and short.title(6) == "Tetris" and data.title(4) == "Forza Horizon"


def test_sasrec_is_trained_as_the_layer_says_wherever_a_checkpoint_is_read(monkeypatch):
    """The preset's SASRec budget reaches the toolbox (and SASRec's cache key) through the layer; the paper recipe
    and a layer saved before it recorded one get the method's default."""
    asked = []

    def load_or_train(data, valid, cfg=None, train_cfg=TrainConfig()):
        asked.append(train_cfg)
        return FakeSASRec()

    monkeypatch.setattr(trainer, "load_or_train", load_or_train)
    data = tiny()
    monkeypatch.setattr(data, "fixed_instances", lambda split: [])
    layer = preset.layer("runs/x/preset/warm_start")
    older = {k: v for k, v in layer.items() if k != "sasrec_train"}
    for saved in (layer, None, older):
        evaluate.Systems(evaluate.Config(), data, saved)
    assert asked == [TrainConfig(epochs=14), TrainConfig(epochs=20, patience=3), TrainConfig()]
    assert TrainConfig(**json.loads(json.dumps(layer))["sasrec_train"]) == TrainConfig(epochs=14)


def test_short_titles_reach_the_prompt_only(boxes):
    _, box = boxes
    x = Instance("ann", list(CTX.history), 4, list(CTX.candidates), position=5)
    message = user_message(x, preset.short_titles(box.data, 8))
    assert "[5] Forza H…" in message and "Forza Horizon" not in message
    assert "[5] Forza Horizon" in box.call("item_info_search", {"item_name": 5}, CTX).text  # tools: full titles


def test_ordering_of_reads_the_last_line_only():
    assert ordering_of("x\nCandidates by popularity, best first: 4, 1, 2, 5, 3") == [4, 1, 2, 5, 3]
    assert ordering_of("Candidates by popularity, best first: 4, 1\nsomething else") is None
    assert ordering_of("error: no such item") is None
    assert ordering_line("taste", [0.1, 0.5, 0.5, -1.0]) == "Candidates by taste, best first: 2, 3, 1, 4"


def test_tool_ordering_scorer_copies_the_tool_order(boxes):
    from agenticrec.baselines import rankings
    _, box = boxes
    instance = Instance("ann", list(CTX.history), CTX.candidates[1], list(CTX.candidates), position=5)
    [ranked] = rankings([instance], tool_ordering_scorer(box.data, box, "candidates_analyze")([instance]),
                        box.popularity)
    assert ranked == [CTX.candidates[n - 1] for n in (4, 1, 2, 5, 3)]
    with pytest.raises(ValueError, match="does not end with an ordering"):
        tool_ordering_scorer(box.data, box, "get_user_profile")([instance])


# ------------------------------------------------------------------------------------------------------------------
# Resolved configs: defaults + flags for the paper recipe; + the preset's settings only under the preset
# ------------------------------------------------------------------------------------------------------------------


def test_train_grpo_with_a_model_folder_is_the_defaults_plus_the_flags(tmp_path):
    cfg = train_grpo.parse_args(["--model", str(tmp_path), "--lr", "2e-6", "--no-drop-all-negative"])
    assert cfg == train_grpo.Config(model=str(tmp_path), lr=2e-6, drop_all_negative=False)


def test_train_grpo_preset_is_the_defaults_plus_the_preset_plus_the_flags():
    assert train_grpo.parse_args([]) == train_grpo.Config(**preset.GRPO)
    assert train_grpo.parse_args(["--lr", "3e-4"]) == train_grpo.Config(**{**preset.GRPO, "lr": 3e-4})


def test_train_grpo_refuses_bad_train_candidates_before_it_starts():
    assert train_grpo.parse_args(["--train-candidates", "20,50"]).train_candidates == "20,50"
    with pytest.raises(SystemExit, match="--train-candidates: '20,20': the sizes must be distinct"):
        train_grpo.parse_args(["--train-candidates", "20,20"])
    with pytest.raises(SystemExit, match="--eval-candidates: '1': the sizes must be distinct and at least 2"):
        train_grpo.parse_args(["--eval-candidates", "1"])


def test_train_ppr_mines_on_the_candidate_sizes_its_stage_1_run_trained_on(tmp_path):
    stage1 = train_grpo.Config(model="/models/qwen", dataset="beauty2023", train_candidates="20,50")
    folder = saved_checkpoint(tmp_path / "final", "train_grpo.py", stage1, None)
    cfg, taken = train_ppr.parse_args(["--model", str(folder)])
    assert cfg.train_candidates == taken["train_candidates"] == "20,50"
    assert train_ppr.parse_args(["--model", str(folder), "--train-candidates", "20"])[0].train_candidates == "20"
    with pytest.raises(SystemExit, match="--train-candidates: '20,x' is not a comma list"):
        train_ppr.parse_args(["--model", str(folder), "--train-candidates", "20,x"])


def test_train_ppr_evaluates_the_ranking_on_the_sizes_stage_1_was_evaluated_on(tmp_path):
    """Trained on 20 and 50 in stage 1, PPR reports the ranking on both even when it trains on 20 alone (the run
    that lost N = 50 without a word); a flag overrides; a stage-1 --eval-candidates comes first."""
    stage1 = train_grpo.Config(model="/models/qwen", train_candidates="20,50")
    folder = saved_checkpoint(tmp_path / "a" / "final", "train_grpo.py", stage1, None)
    cfg, taken = train_ppr.parse_args(["--model", str(folder), "--train-candidates", "20"])
    assert (cfg.train_candidates, cfg.eval_candidates, taken["eval_candidates"]) == ("20", "20,50", "20,50")
    assert train_ppr.parse_args(["--model", str(folder), "--eval-candidates", "50"])[0].eval_candidates == "50"
    with pytest.raises(SystemExit, match="--eval-candidates: '50,50': the sizes must be distinct"):
        train_ppr.parse_args(["--model", str(folder), "--eval-candidates", "50,50"])
    evaluated = train_grpo.Config(model="/models/qwen", train_candidates="20,50", eval_candidates="50,100")
    folder = saved_checkpoint(tmp_path / "b" / "final", "train_grpo.py", evaluated, None)
    assert train_ppr.parse_args(["--model", str(folder)])[0].eval_candidates == "50,100"


def test_a_cached_ab_fine_tune_is_loaded_only_for_its_stage_1_checkpoint(tmp_path):
    """choice_policy trains nothing when out/preset/choice_start holds a fine-tune of the same stage-1 folder (the
    model argument is never touched), and refuses one made from another folder or without its report."""
    import torch

    from agenticrec.model import save_pretrained
    from agenticrec.warmstart import ChoiceStartConfig
    from test_grpo_update import SINGLE, tiny_model
    cached = tiny_model(5)
    save_pretrained(cached, tmp_path / "out" / "preset" / "choice_start")
    load = lambda stage1: preset.choice_policy(None, None, None, None, None, None, SINGLE, tmp_path / "out", stage1,
                                               (20,), ChoiceStartConfig())
    with pytest.raises(SystemExit, match="choice_start_report.json is missing"):
        load(str(tmp_path / "grpo" / "final"))
    (tmp_path / "out" / "preset" / "choice_start_report.json").write_text(
        json.dumps({"stage1": str((tmp_path / "grpo" / "final").resolve()), "steps": 300}))
    model, folder = load(str(tmp_path / "grpo" / "final"))
    assert folder == tmp_path / "out" / "preset" / "choice_start"
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), cached.state_dict().values()))
    with pytest.raises(SystemExit, match="holds an A / B fine-tune of .*grpo/final, not of .*other"):
        load(str(tmp_path / "other"))


def test_a_cached_warm_start_is_reused_only_for_the_sizes_it_was_trained_on(tmp_path):
    report = tmp_path / "warm_start_report.json"
    preset._check_cached_sizes(report, (20, 50))  # no report: nothing to compare
    report.write_text(json.dumps({"steps": 75}))  # written before reports named their sizes: the default
    preset._check_cached_sizes(report, (20,))
    with pytest.raises(SystemExit, match=r"trained on \(20,\) candidates, not \(20, 50\)"):
        preset._check_cached_sizes(report, (20, 50))
    report.write_text(json.dumps({"candidate_sizes": [20, 50]}))
    preset._check_cached_sizes(report, (20, 50))


def test_the_preset_tokenizer_has_one_token_per_candidate_number_of_each_trained_size(tmp_path):
    data = tiny()
    default = preset.preset_tokenizer(data, tmp_path / "20", vocab_size=600, split_digits=False)
    mixed = preset.preset_tokenizer(data, tmp_path / "50", vocab_size=600, split_digits=False,
                                    candidate_sizes=(20, 50))
    assert all(len(mixed.encode(str(n), add_special_tokens=False)) == 1 for n in range(1, 51))
    assert all(len(default.encode(str(n), add_special_tokens=False)) == 1 for n in range(1, 21))
    assert [len(default.encode(str(n), add_special_tokens=False)) for n in (37, 48)] == [2, 2]


def test_every_flag_has_its_help_from_the_dataclass(capsys):
    for module in (train_grpo, train_ppr, evaluate):
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
        printed = "".join(capsys.readouterr().out.split())  # argparse wraps the help text, also at hyphens
        for f in dataclasses.fields(module.Config):
            assert "".join(f.metadata["help"].split()) in printed, (module.__name__, f.name)


def saved_checkpoint(folder, script, cfg, layer, **extra):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "train_config.json").write_text(json.dumps({"script": script, "config": dataclasses.asdict(cfg),
                                                          "preset": layer, **extra}))
    return folder


def test_train_ppr_and_evaluate_on_a_paper_checkpoint_take_only_its_dataset_and_agent_settings(tmp_path):
    stage1 = train_grpo.Config(model="/models/qwen", dataset="beauty", tools="get_user_profile", max_context=4096,
                               lr=3e-6)
    folder = saved_checkpoint(tmp_path / "final", "train_grpo.py", stage1, None)
    cfg, taken = train_ppr.parse_args(["--model", str(folder), "--max-context", "8192"])
    assert taken == {"dataset": "beauty", "tools": "get_user_profile", "max_tool_calls": 10, "max_turn_tokens": 512,
                     "train_candidates": "20", "eval_candidates": "20"}
    assert cfg == train_ppr.Config(model=str(folder), dataset="beauty", tools="get_user_profile", max_context=8192,
                                   eval_candidates="20")
    eval_cfg, layer = evaluate.parse_args(["--checkpoint", str(folder), "--split", "valid"])
    assert layer is None and eval_cfg == evaluate.Config(checkpoint=str(folder), dataset="beauty", split="valid",
                                                         tools="get_user_profile", max_context=4096)
    other, _ = evaluate.parse_args(["--checkpoint", str(folder), "--dataset", "games"])  # a flag overrides
    assert other.dataset == "games"
    plain, taken = train_ppr.parse_args(["--model", str(tmp_path)])  # no train_config.json: the defaults
    assert plain == train_ppr.Config(model=str(tmp_path)) and taken == {}
    with pytest.raises(SystemExit, match="--choice-warm-start needs a CPU preset checkpoint"):
        train_ppr.parse_args(["--model", str(folder), "--choice-warm-start", "5"])


def test_a_preset_checkpoint_brings_its_layer_to_train_ppr_and_evaluate(tmp_path):
    stage1 = train_grpo.parse_args(["--out", str(tmp_path / "run")])
    warm = tmp_path / "run" / "preset" / "warm_start"
    saved_checkpoint(warm, "", stage1, None)
    folder = saved_checkpoint(tmp_path / "run" / "final", "train_grpo.py", stage1, preset.layer(warm))
    cfg, taken = train_ppr.parse_args(["--model", str(folder), "--steps", "2"])
    agent = {"dataset": "games", **{k: preset.GRPO[k] for k in ("tools", "max_tool_calls", "max_turn_tokens",
                                                                  "max_context")}}
    assert cfg == train_ppr.Config(**{"model": str(folder), **agent, **preset.PPR["grpo"], "steps": 2,
                                      "eval_candidates": "20"})
    assert cfg.objective == "grpo" and cfg.choice_warm_start > 0  # the paper's objective, after the A / B fine-tune
    assert taken == {**agent, "train_candidates": "20", "eval_candidates": "20",
                     **{k: v for k, v in preset.PPR["grpo"].items() if k != "steps"}}
    logistic, _ = train_ppr.parse_args(["--model", str(folder), "--objective", "logistic"])  # its own settings
    assert logistic == train_ppr.Config(**{"model": str(folder), **agent, **preset.PPR["logistic"],
                                           "objective": "logistic", "eval_candidates": "20"})
    assert logistic.choice_warm_start == 0
    with pytest.raises(SystemExit, match="--objective must be grpo or logistic, got 'dpo'"):  # not a KeyError
        train_ppr.parse_args(["--model", str(folder), "--objective", "dpo"])
    eval_cfg, layer = evaluate.parse_args(["--checkpoint", str(folder)])
    assert layer == preset.layer(warm)
    assert eval_cfg == evaluate.Config(checkpoint=str(folder), frozen=str(warm), **agent)


def test_the_warm_start_is_found_where_recorded_else_beside_a_moved_run(tmp_path):
    recorded = tmp_path / "old" / "preset" / "warm_start"
    recorded.mkdir(parents=True)
    (recorded / "config.json").write_text("{}")
    layer = preset.layer(recorded)
    moved = tmp_path / "moved" / "final"
    assert preset.warm_start_folder(layer, moved) == recorded
    (recorded / "config.json").unlink()  # the run folder moved away from where it recorded its warm start
    assert preset.warm_start_folder(layer, moved) == tmp_path / "moved" / "preset" / "warm_start"


def test_evaluate_sets_each_tool_order_copied_beside_the_baselines_under_the_preset(boxes, monkeypatch):
    paper, box = boxes
    monkeypatch.setattr(evaluate.Systems, "sasrec_scorer", lambda self: lambda xs: [[0.0] * 5 for _ in xs])
    x = Instance("ann", list(CTX.history), 2, list(CTX.candidates), position=5)  # item 2 is candidate 4
    systems = object.__new__(evaluate.Systems)  # the rows only: no models, no SASRec training
    systems.cfg, systems.data, systems.toolbox = evaluate.Config(), box.data, box
    rows = systems.baselines([x])
    assert rows["candidates_analyze, copied"]["ranks"] == [1]  # popularity order 4, 1, 2, 5, 3
    assert rows["get_similar_users, copied"]["ranks"] == [3]  # taste order 5, 1, 4, 2, 3
    systems.toolbox = paper
    assert not [name for name in systems.baselines([x]) if "copied" in name]


def test_agent_config_is_built_in_one_place():
    cfg = train_grpo.Config(tools="none", max_tool_calls=3, max_turn_tokens=7, max_context=99, temperature=0.9)
    from agenticrec.trainer import agent_config
    assert agent_config(cfg) == AgentConfig(max_tool_calls=3, max_turn_tokens=7, max_context=99, use_tools=False,
                                            temperature=0.9)
    assert agent_config(cfg, temperature=0.0).temperature == 0.0
    assert "max_title_chars" not in {f.name for f in dataclasses.fields(AgentConfig)}  # titles: the dataset's


def test_copied_orders_score_each_no_argument_ranking_tool(boxes):
    _, box = boxes
    x = Instance("ann", list(CTX.history), 2, list(CTX.candidates), position=5)  # item 2 is candidate 4
    rows = preset.copied_orders(box.data, box, [x])
    assert list(rows) == ["candidates_analyze, copied", "get_session_behavior, copied",
                          "get_similar_users, copied"]  # similar items needs an item
    assert rows["candidates_analyze, copied"]["H@1"] == 1.0  # popularity order 4, 1, 2, 5, 3: candidate 4 first
    assert rows["get_session_behavior, copied"]["H@1"] == 1.0  # co-occurrence order 4, 5, 1, 2, 3
    assert rows["get_similar_users, copied"]["H@1"] == 0.0  # taste order 5, 1, 4, 2, 3: candidate 4 third
    assert rows["get_similar_users, copied"]["N@5"] == pytest.approx(0.5)  # 1 / log2(3 + 1)
