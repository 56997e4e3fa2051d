using System.CommandLine;
using System.Text.Json;
using Dtrain.Specs;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cli;

/// <summary>The `dtrain` executable end to end, as a user runs it: train, then eval / predict / generate on the checkpoint.</summary>
public class CliTests
{
    static string WriteSpec(TempDir tmp, JobSpec spec) => tmp.Write("job.json", JobSpecSerializer.Serialize(spec));

    [Fact]
    public void Help_lists_every_verb_and_each_verb_has_help()
    {
        using var tmp = new TempDir();
        var root = CliRunner.Run(tmp.Path, "--help");
        Assert.Equal(0, root.ExitCode);
        foreach (var verb in new[] { "train", "validate", "eval", "predict", "generate", "serve", "worker", "submit", "watch", "status", "list", "cancel", "workers", "download", "cluster", "plan", "health" })
        {
            Assert.Contains(verb, root.Stdout);
            var help = CliRunner.Run(tmp.Path, verb, "--help");
            Assert.True(help.ExitCode == 0, help.ToString());
            Assert.Contains("Usage:", help.Stdout);
        }
    }

    [Fact]
    public void Train_then_eval_predict_on_a_classifier()
    {
        using var tmp = new TempDir();
        tmp.Write("d.jsonl", TestJobs.ClassificationJsonl());
        var spec = WriteSpec(tmp, TestJobs.Classifier("d.jsonl", steps: 40) with { Output = "out" });
        var train = CliRunner.Run(tmp.Path, "train", spec);
        Assert.True(train.ExitCode == 0, train.ToString());
        Assert.Contains("validation: loss", train.Stdout);
        Assert.Contains("accuracy", train.Stdout);

        tmp.Write("test.csv", "text,label\n\"win money now offer 999\",spam\n\"meeting notes for project 999\",ham\n");
        var eval = CliRunner.Run(tmp.Path, "eval", "out", "--data", "test.csv", "--format", "csv");
        Assert.True(eval.ExitCode == 0, eval.ToString());
        Assert.Contains("accuracy 100.00%", eval.Stdout);
        // Without --format the extension says csv (it was read as the training format, JSONL: "malformed JSON").
        var byExtension = CliRunner.Run(tmp.Path, "eval", "out", "--data", "test.csv");
        Assert.True(byExtension.ExitCode == 0, byExtension.ToString());
        Assert.Contains("accuracy 100.00%", byExtension.Stdout);

        var predict = CliRunner.Run(tmp.Path, "predict", "out", "win money now offer 5", "meeting notes for project 5");
        Assert.True(predict.ExitCode == 0, predict.ToString());
        var lines = predict.Stdout.Trim().Split('\n');
        Assert.StartsWith("spam\t", lines[0]);
        Assert.StartsWith("ham\t", lines[1]);
    }

    [Fact]
    public void Train_then_generate_from_a_language_model_is_reproducible_by_seed()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 30) with { Output = "lm" });
        var train = CliRunner.Run(tmp.Path, "train", spec);
        Assert.True(train.ExitCode == 0, train.ToString());
        var a = CliRunner.Run(tmp.Path, "generate", "lm", "--prompt", "the ", "--length", "40", "--seed", "7");
        var b = CliRunner.Run(tmp.Path, "generate", "lm", "--prompt", "the ", "--length", "40", "--seed", "7");
        Assert.True(a.ExitCode == 0, a.ToString());
        Assert.StartsWith("the ", a.Stdout);
        Assert.Equal(a.Stdout, b.Stdout);
        Assert.True(a.Stdout.TrimEnd('\n').Length >= 44);
        // Temperatures at both ends of the range sample (they overflowed float32 into NaN probabilities inside libtorch);
        // near infinity every token but <pad> and <unk> is equally likely, and <unk> (printed as U+FFFD) is never emitted.
        foreach (var t in new[] { "1e-40", "1e300" })
        {
            var extreme = CliRunner.Run(tmp.Path, "generate", "lm", "--prompt", "the ", "--length", "400", "--temperature", t);
            Assert.True(extreme.ExitCode == 0, $"--temperature {t}: {extreme}");
            Assert.DoesNotContain('\uFFFD', extreme.Stdout);
            Assert.True(extreme.Stdout.TrimEnd('\n').Length >= 404, extreme.Stdout);
        }
        var eval = CliRunner.Run(tmp.Path, "eval", "lm");
        Assert.True(eval.ExitCode == 0, eval.ToString());
        Assert.Contains("perplexity", eval.Stdout);
        // By default eval reads the validation split as training's own validation did (its batch size): the same figures.
        var trained = System.Text.RegularExpressions.Regex.Matches(train.Stdout + train.Stderr, @"validation: (loss [0-9.]+, perplexity [0-9.]+)");
        Assert.NotEmpty(trained);
        Assert.Contains(trained[^1].Groups[1].Value, eval.Stdout);
        // A bad device names what was typed, without .NET's "(Parameter 'requested')".
        var device = CliRunner.Run(tmp.Path, "eval", "lm", "--device", "gpu0");
        Assert.True(device.ExitCode == 2, device.ToString());
        Assert.Contains("device \"gpu0\" must be", device.Stderr);
        Assert.DoesNotContain("(Parameter", device.Stderr);
        // A budget of a fraction of a byte is a budget (it was rounded to 0 bytes, which meant "no check").
        var budget = CliRunner.Run(tmp.Path, "validate", spec, "--memory-budget", "0.0000009");
        Assert.True(budget.ExitCode == 2, budget.ToString());
    }

    [Fact]
    public async Task SIGTERM_finishes_the_step_saves_a_checkpoint_and_exits_143_and_resume_continues_from_it()
    {
        // How `timeout`, systemd, Docker and Kubernetes stop a process: it used to end at once (143) with nothing saved.
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 1_000_000) with { Output = "lm" });
        using var p = System.Diagnostics.Process.Start(CliRunner.StartInfo(tmp.Path, null, "train", spec, "--plain"))!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = new System.Text.StringBuilder();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(3));
        try
        {
            // Training has started once a step line is printed.
            while (await p.StandardOutput.ReadLineAsync(timeout.Token) is { } line)
            {
                stdout.AppendLine(line);
                if (line.Contains("step", StringComparison.Ordinal) && line.Contains("loss", StringComparison.Ordinal)) break;
            }
            using (var kill = System.Diagnostics.Process.Start("kill", ["-TERM", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])!) await kill.WaitForExitAsync(timeout.Token);
            stdout.Append(await p.StandardOutput.ReadToEndAsync(timeout.Token));
            await p.WaitForExitAsync(timeout.Token);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
        var err = await stderr;
        Assert.True(p.ExitCode == 143, $"exit {p.ExitCode}\n{stdout}\n{err}");
        Assert.Contains("SIGTERM: finishing the current step and saving a checkpoint", err);
        var saved = Directory.GetFiles(Path.Combine(tmp.Path, "lm", "checkpoints"), "ckpt-*.dtck");
        Assert.True(saved.Length == 1, string.Join(", ", saved));
        var resumed = CliRunner.Run(tmp.Path, "train", spec, "--resume", "--max-steps", "1000000", "--max-minutes", "0.05", "--plain");
        Assert.True(resumed.ExitCode == 0, resumed.ToString());
        Assert.Contains($"resumed from {saved[0]} at step", resumed.Stdout + resumed.Stderr);
        // A resume with nothing left to run says so (it printed a run of "0.0 samples/s").
        var nothing = CliRunner.Run(tmp.Path, "train", spec, "--resume", "--max-steps", "1", "--plain");
        Assert.True(nothing.ExitCode == 0, nothing.ToString());
        Assert.Contains("nothing left to train: the checkpoint is at step", nothing.Stdout + nothing.Stderr);
        Assert.DoesNotContain("0.0 samples/s", nothing.Stdout);
    }

    [Fact]
    public void Word_level_generation_puts_a_space_between_the_prompt_and_the_first_generated_word()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 5) with { Output = "words", Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word } });
        var train = CliRunner.Run(tmp.Path, "train", spec);
        Assert.True(train.ExitCode == 0, train.ToString());
        var g = CliRunner.Run(tmp.Path, "generate", "words", "--prompt", "the cat", "--length", "5");
        Assert.True(g.ExitCode == 0, g.ToString());
        Assert.StartsWith("the cat ", g.Stdout);   // it printed "the catsat ..."
        Assert.DoesNotContain("  ", g.Stdout.TrimEnd());
    }

    [Fact]
    public void A_min_frequency_that_leaves_no_token_is_refused_naming_the_field()
    {
        // It ended in .NET's "vocabulary must hold <pad>, <unk> and at least one token. Actual value was 2." with no field.
        using var tmp = new TempDir();
        tmp.Write("c.jsonl", TestJobs.ClassificationJsonl());
        var spec = WriteSpec(tmp, TestJobs.Classifier("c.jsonl") with { Tokenizer = new TokenizerSpec { Kind = TokenizerKinds.Word, MinFrequency = 1000 } });
        var r = CliRunner.Run(tmp.Path, "train", spec);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains("$.tokenizer.min_frequency: 1000 leaves no word token of the training data in the vocabulary", r.Stderr);
        Assert.DoesNotContain("Actual value", r.Stderr);
    }

    [Fact]
    public void Invalid_spec_fails_with_field_paths_and_exit_code_2()
    {
        using var tmp = new TempDir();
        var spec = tmp.Write("bad.json", """{"name":"x","data":{"train":"t.txt"},"model":{"cell":"lstmm","hiden_size":3}}""");
        var r = CliRunner.Run(tmp.Path, "train", spec);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("$.model.hiden_size", r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    [Fact]
    public void Malformed_data_fails_naming_file_and_line()
    {
        using var tmp = new TempDir();
        tmp.Write("d.jsonl", "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n{\"text\": oops}\n");
        var spec = WriteSpec(tmp, TestJobs.Classifier("d.jsonl"));
        var r = CliRunner.Run(tmp.Path, "train", spec);
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("d.jsonl:3", r.Stderr);
    }

    [Fact]
    public void Missing_checkpoint_and_wrong_model_kind_are_clear_errors()
    {
        using var tmp = new TempDir();
        var missing = CliRunner.Run(tmp.Path, "generate", "nope.dtck");
        Assert.Equal(2, missing.ExitCode);
        Assert.Contains("nope.dtck", missing.Stderr);
    }

    [Fact]
    public void Validate_prints_the_spec_with_defaults()
    {
        using var tmp = new TempDir();
        var spec = tmp.Write("ok.json", """{"name":"ok","data":{"train":"t.txt"}}""");
        var r = CliRunner.Run(tmp.Path, "validate", spec);
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(r.Stdout);
        Assert.Equal(256, doc.RootElement.GetProperty("model").GetProperty("hidden_size").GetInt32());
    }

    /// <summary>Every integer and number option of every verb, as the command tree declares them.</summary>
    static IEnumerable<(string Path, Option Option, bool Integer)> NumericOptions(Command command, string path)
    {
        foreach (var o in command.Options)
        {
            if (o.ValueType == typeof(int) || o.ValueType == typeof(int?) || o.ValueType == typeof(long) || o.ValueType == typeof(long?)) yield return (path, o, true);
            else if (o.ValueType == typeof(double) || o.ValueType == typeof(double?)) yield return (path, o, false);
        }
        foreach (var sub in command.Subcommands)
            foreach (var x in NumericOptions(sub, $"{path} {sub.Name}".Trim())) yield return x;
    }

    [Fact]
    public void Every_numeric_option_of_every_verb_names_itself_and_the_expected_kind_of_value()
    {
        var found = NumericOptions(Dtrain.Cli.DtrainCli.Build(), "").ToList();
        Assert.Contains(found, x => x.Path == "train" && x.Option.Name == "--seed");
        Assert.Contains(found, x => x.Path == "generate" && x.Option.Name == "--seed");
        Assert.True(found.Count >= 15, $"only {found.Count} numeric options found");
        foreach (var (path, option, integer) in found)
        {
            foreach (var bad in integer ? new[] { "abc", "1.5", "99999999999999999999" } : ["abc", "NaN"])
            {
                var result = Dtrain.Cli.DtrainCli.Build().Parse([.. path.Split(' '), option.Name, bad]);
                var messages = string.Join(" | ", result.Errors.Select(e => e.Message));
                Assert.Contains($"{option.Name}: \"{bad}\" ", messages);
                Assert.Contains(integer ? (bad.Length > 10 ? "out of range" : "is not an integer") : bad == "NaN" ? "is not a finite number" : "is not a number", messages);
                Assert.DoesNotContain("System.", messages);
            }
            // A good value still parses.
            var good = Dtrain.Cli.DtrainCli.Build().Parse([.. path.Split(' '), option.Name, "2"]);
            Assert.DoesNotContain(good.Errors, e => e.Message.Contains(option.Name, StringComparison.Ordinal));
        }
    }

    [Fact]
    public void A_value_that_does_not_parse_exits_2_with_one_clear_line()
    {
        using var tmp = new TempDir();
        var r = CliRunner.Run(tmp.Path, "train", "job.json", "--seed", "abc");
        Assert.Equal(2, r.ExitCode);
        Assert.Contains("error: --seed: \"abc\" is not an integer", r.Stderr);
        Assert.Contains("see: dtrain train --help", r.Stderr);
        Assert.DoesNotContain("Nullable", r.Stderr + r.Stdout);
        Assert.DoesNotContain("Usage:", r.Stdout);
        Assert.Equal(2, CliRunner.Run(tmp.Path, "train", "job.json", "--no-such-option").ExitCode);
    }

    [Fact]
    public void An_output_that_is_an_existing_file_is_refused_before_training()
    {
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 5));
        var file = tmp.Write("taken", "not a directory");
        var r = CliRunner.Run(tmp.Path, "train", spec, "--output", file);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"--output: {file} is an existing file", r.Stderr);
        Assert.DoesNotContain("step 1", r.Stdout);
        Assert.Equal("not a directory", File.ReadAllText(file));

        // The same through the spec's "output", and for the model file of `cluster run` (an existing directory).
        var viaSpec = CliRunner.Run(tmp.Path, "train", WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 5) with { Output = "taken" }));
        Assert.True(viaSpec.ExitCode == 2, viaSpec.ToString());
        Assert.Contains($"$.output: {file} is an existing file", viaSpec.Stderr);
        Directory.CreateDirectory(Path.Combine(tmp.Path, "models"));
        var cluster = CliRunner.Run(tmp.Path, "cluster", "run", spec, "--output", "models");
        Assert.True(cluster.ExitCode == 2, cluster.ToString());
        Assert.Contains("is an existing directory", cluster.Stderr);
        Assert.DoesNotContain("starting a local cluster", cluster.Stdout);
    }

    [Fact]
    public void Cluster_run_saves_its_model_into_the_specs_output_like_train()
    {
        // The spec's "output" is the run directory of `cluster run` too: its model goes to OUTPUT/model.dtck. A
        // directory in the way there is refused before any cluster starts, naming $.output (and runs/NAME is not used).
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var spec = WriteSpec(tmp, TestJobs.CharLm("t.txt", steps: 5) with { Output = "elsewhere" });
        var inTheWay = Path.Combine(tmp.Path, "elsewhere", "model.dtck");
        Directory.CreateDirectory(inTheWay);
        Directory.CreateDirectory(Path.Combine(tmp.Path, "runs", "test-lm", "model.dtck"));
        var r = CliRunner.Run(tmp.Path, "cluster", "run", spec);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains($"$.output: {inTheWay} is an existing directory", r.Stderr);
        Assert.DoesNotContain("starting a local cluster", r.Stdout);
    }

    [Fact]
    public void Cluster_run_trains_from_a_local_dataset_named_relative_to_the_spec_like_train()
    {
        // `cluster run` used to refuse it: its coordinator had no data root ("reads datasets only from s3://"), and a
        // relative path could not be named anyway. Now the dataset's directory is the local coordinator's data root and
        // the job names it by its absolute path, which the local workers see too.
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text());
        var prepared = CliRunner.Run(tmp.Path, "prepare", "t.txt", "-o", "ds");
        Assert.True(prepared.ExitCode == 0, prepared.ToString());
        var spec = WriteSpec(tmp, TestJobs.CharLm("unused", steps: 4) with { Data = new DataSpec { Dataset = "ds" } });
        var r = CliRunner.Run(tmp.Path, "cluster", "run", spec, "--workers", "2", "--threads", "1", "--plain");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("step 4/4", r.Stdout);
        Assert.True(File.Exists(Path.Combine(tmp.Path, "runs", "test-lm", "model.dtck")), r.ToString());

        // A dataset directory that does not exist is refused before any cluster starts, naming the field.
        var missing = CliRunner.Run(tmp.Path, "cluster", "run", WriteSpec(tmp, TestJobs.CharLm("unused", steps: 4) with { Data = new DataSpec { Dataset = "nowhere" } }));
        Assert.True(missing.ExitCode == 2, missing.ToString());
        Assert.Contains($"$.data.dataset: \"nowhere\": no such directory ({Path.Combine(tmp.Path, "nowhere")})", missing.Stderr);
        Assert.DoesNotContain("starting a local cluster", missing.Stdout);
    }

    [Fact]
    public void Predict_file_gives_every_record_a_row_in_order_or_fails_naming_the_line()
    {
        // Trained to skip malformed and over-long records: predict must still not drop any of its input.
        using var tmp = new TempDir();
        tmp.Write("d.jsonl", TestJobs.ClassificationJsonl());
        var clf = TestJobs.Classifier("d.jsonl", steps: 5) with { Output = "out" };
        clf = clf with { Data = clf.Data with { OnError = ErrorPolicies.Skip, Overlength = OverlengthPolicies.Skip, MaxLength = 40 } };
        var train = CliRunner.Run(tmp.Path, "train", WriteSpec(tmp, clf));
        Assert.True(train.ExitCode == 0, train.ToString());

        var longText = string.Concat(Enumerable.Repeat("meeting notes ", 5)).Trim();
        tmp.Write("bad.jsonl", $"{{\"text\": \"win money\"}}\n{{\"text\": broken}}\n{{\"text\": \"{longText}\"}}\n");
        var bad = CliRunner.Run(tmp.Path, "predict", "out", "--file", "bad.jsonl");
        Assert.True(bad.ExitCode == 2, bad.ToString());
        Assert.Contains("bad.jsonl:2", bad.Stderr);
        Assert.Equal("", bad.Stdout);

        tmp.Write("ok.jsonl", $"{{\"text\": \"win money\"}}\n{{\"text\": \"{longText}\"}}\n");
        var ok = CliRunner.Run(tmp.Path, "predict", "out", "--file", "ok.jsonl");
        Assert.True(ok.ExitCode == 0, ok.ToString());
        Assert.Equal(2, ok.Stdout.TrimEnd('\n').Split('\n').Length);
        Assert.EndsWith("\twin money", ok.Stdout.Split('\n')[0]);
        Assert.Contains("1 text(s) longer than the model's data.max_length of 40 characters", ok.Stderr);
        Assert.Contains("ok.jsonl:2", ok.Stderr);
        // The long text is classified as the same text given as an argument is (cut to max_length).
        var single = CliRunner.Run(tmp.Path, "predict", "out", longText);
        Assert.Equal(single.Stdout.Split('\t')[..3], ok.Stdout.Split('\n')[1].Split('\t')[..3]);

        // Plain lines: an empty line is a text too (as `predict ""`), so rows line up with lines.
        tmp.Write("lines.txt", "win money\n\nmeeting notes\n");
        var lines = CliRunner.Run(tmp.Path, "predict", "out", "--file", "lines.txt");
        Assert.True(lines.ExitCode == 0, lines.ToString());
        var rows = lines.Stdout.TrimEnd('\n').Split('\n');
        Assert.Equal(3, rows.Length);
        Assert.EndsWith("\t", rows[1]);
        Assert.EndsWith("\tmeeting notes", rows[2]);

        foreach (var top in new[] { "0", "-1" })
        {
            var r = CliRunner.Run(tmp.Path, "predict", "out", "win money", "--top", top);
            Assert.True(r.ExitCode == 2, r.ToString());
            Assert.Contains($"--top: {top} is out of range; it must be 1 or more", r.Stderr);
        }
    }
}
