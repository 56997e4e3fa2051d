using System.Diagnostics;
using System.Text.Json;
using System.Xml.Linq;
using Dtrain.Checkpoints;
using Dtrain.Data;
using Dtrain.Inference;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using Dtrain.Training;
using static TorchSharp.torch;

namespace Dtrain.Tests.Packaging;

/// <summary>
/// The packages `dotnet pack` builds (Dtrain.Shared, Dtrain.Inference, Dtrain.Client) used as an app uses them: packed into a
/// local feed, restored from it by a separate console project (tests/PackageSample, copied out of the tree) that is built
/// and run as its own process. docs/packages.md.
/// </summary>
public class PackageConsumerTests
{
    /// <summary>A bound for one dotnet pack / build / run on a loaded machine, not a pace: each ends on its own long before.</summary>
    private static readonly TimeSpan ProcessBound = TimeSpan.FromMinutes(10);

    private static readonly string[] Texts =
    [
        "free money now",
        "lunch",
        "are we still on for lunch at noon tomorrow or should we move it to friday",
        "",
        "click here to win a free prize, free money, free everything",
        "zebra",
    ];

    [Fact]
    public async Task App_restoring_the_packages_from_a_local_feed_predicts_generates_and_trains_on_a_coordinator()
    {
        TestEnvironment.Init();
        using var tmp = new TempDir();
        var classifier = SaveClassifier(tmp);
        var languageModel = SaveLanguageModel(tmp);
        IReadOnlyList<Prediction> expected;
        using (var trained = TrainedModel.Load(classifier))
        {
            expected = Predictor.Predict(trained, Texts);
            OnnxExport.Write(trained, Path.Combine(tmp.Path, "clf.onnx"));
        }
        using (var trained = TrainedModel.Load(languageModel))
            OnnxExport.Write(trained, Path.Combine(tmp.Path, "lm.onnx"));

        var app = BuildSample(tmp);

        // A .dtck: dtrain's own code in the app, the same probabilities as `dtrain predict`.
        var dtck = RunJson(app, ["predict", classifier, .. Texts]);
        Assert.Equal("dtck", dtck.GetProperty("runtime").GetString());
        AssertPredictions(expected, dtck.GetProperty("predict"), 1e-12);
        // The exported model in ONNX Runtime: within 1e-5 of them.
        var onnx = RunJson(app, ["predict", Path.Combine(tmp.Path, "clf.onnx"), .. Texts]);
        Assert.Equal("onnx", onnx.GetProperty("runtime").GetString());
        AssertPredictions(expected, onnx.GetProperty("predict"), 1e-5);
        // One model from 8 threads at once (a pool of 2 copies): every call gives the single-threaded result.
        Assert.True(RunJson(app, ["parallel", classifier, "8", .. Texts]).GetProperty("parallel").GetBoolean());

        // Generation: the text `dtrain generate` prints for the same prompt, length, temperature, top-k and seed.
        var cli = CliRunner.Run(tmp.Path, "generate", languageModel, "--prompt", "the ", "--length", "40", "--temperature", "0.8", "--top-k", "5", "--seed", "3");
        Assert.True(cli.ExitCode == 0, cli.ToString());
        var generated = RunJson(app, ["generate", languageModel, "the ", "40", "0.8", "5", "3"]);
        Assert.Equal("dtck", generated.GetProperty("runtime").GetString());
        Assert.Equal(cli.Stdout.TrimEnd('\n'), "the " + generated.GetProperty("generate").GetString());
        var generatedOnnx = RunJson(app, ["generate", Path.Combine(tmp.Path, "lm.onnx"), "the ", "40", "0.8", "5", "3"]);
        Assert.Equal("onnx", generatedOnnx.GetProperty("runtime").GetString());
        Assert.Equal(generated.GetProperty("generate").GetString(), generatedOnnx.GetProperty("generate").GetString());

        // Dtrain.Client against a real coordinator and worker on loopback, its token from $DTRAIN_TOKEN as the CLI's:
        // submit a spec file (its data uploaded), watch to the end, status, download the model.
        await using var cluster = await InProcessCluster.StartAsync(1);
        Directory.CreateDirectory(Path.Combine(tmp.Path, "job", "data"));
        tmp.Write("job/data/t.txt", TestJobs.Text());
        var spec = TestJobs.CharLm("data/t.txt", steps: 4) with { Name = "packaged" };
        var specPath = tmp.Write("job/lm.json", JobSpecSerializer.Serialize(spec));
        var downloaded = Path.Combine(tmp.Path, "downloaded", "model.dtck");
        var remote = RunJson(app, ["remote", cluster.Address, specPath, downloaded], new Dictionary<string, string?>
        {
            ["HOME"] = tmp.Path,
            ["XDG_CONFIG_HOME"] = Path.Combine(tmp.Path, ".config"),
            ["DTRAIN_TOKEN"] = cluster.AdminToken,
            ["DTRAIN_TOKEN_FILE"] = null,
            ["DTRAIN_TLS_DIR"] = null,
            ["DTRAIN_COORDINATOR"] = null,
        });
        Assert.True(remote.GetProperty("state").GetString() == "Succeeded", remote.ToString());
        Assert.Equal("Succeeded", remote.GetProperty("watched").GetString());
        Assert.True(remote.GetProperty("events").GetInt32() >= 2, remote.ToString());
        Assert.Equal(4, remote.GetProperty("step").GetInt64());
        Assert.Equal(new FileInfo(downloaded).Length, remote.GetProperty("bytes").GetInt64());
        using var model = TrainedModel.Load(downloaded);
        Assert.Equal(("packaged", 4L), (model.Spec.Name, model.State.Step));
    }

    private static void AssertPredictions(IReadOnlyList<Prediction> expected, JsonElement got, double tolerance)
    {
        Assert.Equal(expected.Count, got.GetArrayLength());
        for (var i = 0; i < expected.Count; i++)
        {
            var g = got[i];
            var ranked = expected[i].Probabilities.OrderByDescending(kv => kv.Value).Take(2).ToList();
            Assert.Equal(expected[i].Label, g.GetProperty("label").GetString());
            Assert.True(Math.Abs(expected[i].Probability - g.GetProperty("probability").GetDouble()) <= tolerance, $"text {i}: {expected[i].Probability} vs {g}");
            var top = g.GetProperty("top");
            Assert.Equal(2, top.GetArrayLength());
            for (var k = 0; k < 2; k++)
            {
                Assert.Equal(ranked[k].Key, top[k][0].GetString());
                Assert.True(Math.Abs(ranked[k].Value - top[k][1].GetDouble()) <= tolerance, $"text {i} label {ranked[k].Key}: {ranked[k].Value} vs {top[k][1]}");
            }
        }
    }

    /// <summary>
    /// Packs the three packages into TMP/feed and builds the sample in TMP/app against them: its nuget.config lists only
    /// that feed (the only source of Dtrain.*, by package source mapping) and nuget.org, with the machine's package cache
    /// as a fallback folder (so the test restores offline) and a fresh packages folder of its own (so a package from an
    /// earlier run is never used). Returns the built app's dll.
    /// </summary>
    private static string BuildSample(TempDir tmp)
    {
        var feed = Directory.CreateDirectory(Path.Combine(tmp.Path, "feed")).FullName;
        foreach (var project in new[] { "src/Shared/Dtrain.Shared.csproj", "src/Inference/Dtrain.Inference.csproj", "src/Client/Dtrain.Client.csproj" })
            Dotnet(RepoFiles.Root, "pack", RepoFiles.PathOf(project), "-c", "Release", "-o", feed, "-v", "q", "-nologo");
        var version = XDocument.Load(RepoFiles.PathOf("Directory.Build.props")).Descendants("Version").Single().Value;
        foreach (var id in new[] { "Dtrain.Shared", "Dtrain.Inference", "Dtrain.Client" })
            Assert.True(File.Exists(Path.Combine(feed, $"{id}.{version}.nupkg")), $"dotnet pack made no {id}.{version}.nupkg in {feed}: {string.Join(", ", Directory.GetFiles(feed).Select(Path.GetFileName))}");

        var app = Directory.CreateDirectory(Path.Combine(tmp.Path, "app")).FullName;
        foreach (var file in new[] { "PackageSample.csproj", "Program.cs" })
            File.Copy(RepoFiles.PathOf("tests", "PackageSample", file), Path.Combine(app, file));
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } set
            ? set
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        new XDocument(new XElement("configuration",
            new XElement("config", new XElement("add", new XAttribute("key", "globalPackagesFolder"), new XAttribute("value", Path.Combine(tmp.Path, "packages")))),
            new XElement("packageSources", new XElement("clear"),
                new XElement("add", new XAttribute("key", "local"), new XAttribute("value", feed)),
                new XElement("add", new XAttribute("key", "nuget.org"), new XAttribute("value", "https://api.nuget.org/v3/index.json"))),
            new XElement("fallbackPackageFolders", new XElement("add", new XAttribute("key", "cache"), new XAttribute("value", cache))),
            new XElement("packageSourceMapping",
                new XElement("packageSource", new XAttribute("key", "local"), new XElement("package", new XAttribute("pattern", "Dtrain.*"))),
                new XElement("packageSource", new XAttribute("key", "nuget.org"), new XElement("package", new XAttribute("pattern", "*"))))))
            .Save(Path.Combine(app, "nuget.config"));
        Dotnet(app, "build", "-c", "Release", "-o", Path.Combine(app, "out"), $"-p:DtrainPackageVersion={version}", "-v", "q", "-nologo");
        // The app got the packages from the feed, not the repository.
        foreach (var id in new[] { "dtrain.shared", "dtrain.inference", "dtrain.client" })
            Assert.True(Directory.Exists(Path.Combine(tmp.Path, "packages", id, version)), $"{id} {version} was not restored from the local feed into {tmp.Path}/packages");
        return Path.Combine(app, "out", "PackageSample.dll");
    }

    private static JsonElement RunJson(string dll, string[] args, IReadOnlyDictionary<string, string?>? environment = null)
    {
        var r = Dotnet(Path.GetDirectoryName(dll)!, environment, ["exec", dll, .. args]);
        var line = r.Stdout.Split('\n').LastOrDefault(l => l.StartsWith('{')) ?? throw new Xunit.Sdk.XunitException($"no JSON from the sample app:\n{r}");
        return JsonDocument.Parse(line).RootElement.Clone();
    }

    private static CliRunner.Result Dotnet(string workDir, params string[] args) => Dotnet(workDir, null, args);

    /// <summary>Runs dotnet with extra environment variables (a null value removes the variable); asserts it succeeded.</summary>
    private static CliRunner.Result Dotnet(string workDir, IReadOnlyDictionary<string, string?>? environment, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["MSBUILDDISABLENODEREUSE"] = "1";
        foreach (var (k, v) in environment ?? new Dictionary<string, string?>())
            if (v is null) psi.Environment.Remove(k);
            else psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(ProcessBound))
        {
            p.Kill(entireProcessTree: true);
            throw new TimeoutException($"dotnet {string.Join(' ', args)} did not finish within {ProcessBound}");
        }
        var result = new CliRunner.Result(p.ExitCode, stdout.Result, stderr.Result);
        Assert.True(result.ExitCode == 0, $"dotnet {string.Join(' ', args)} (in {workDir}) failed:\n{result}");
        return result;
    }

    private static string SaveClassifier(TempDir tmp)
    {
        var spec = TestJobs.Classifier("unused") with { Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 8, HiddenSize = 12 } };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, Texts.Where(t => !t.Contains("zebra", StringComparison.Ordinal)));
        var labels = new LabelSet(["ham", "spam", "eggs"]);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, labels.Count, CPU);
        var store = new CheckpointStore(Path.Combine(tmp.Path, "clf"), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, labels, new TrainingState { Step = 7 }, engine));
    }

    /// <summary>A small character language model trained a few steps, so that sampling is not near uniform.</summary>
    private static string SaveLanguageModel(TempDir tmp)
    {
        var spec = TestJobs.CharLm("unused") with { Model = new ModelSpec { Cell = CellKinds.Lstm, Layers = 1, EmbeddingDim = 8, HiddenSize = 16 } };
        var tokenizer = TokenizerFactory.Fit(spec.Tokenizer, [TestJobs.Text(2)]);
        var source = new LanguageModelBatches(tokenizer.Encode(TestJobs.Text()), 4, 16, LmSamplingKinds.Stream, seed: 1);
        using var engine = new TrainingEngine(spec, tokenizer.VocabSize, 0, CPU);
        for (var k = 0; k < 30; k++)
        {
            using var batch = source.Get(new StepPosition(0, k), 0, 4)!;
            var stats = engine.ComputeGradients(batch, carryState: true);
            engine.ApplyGradients(stats.Count, 0.03);
        }
        var store = new CheckpointStore(Path.Combine(tmp.Path, "lm"), 3);
        return store.Save(TrainingCheckpoint.Capture(spec, tokenizer, LabelSet.Empty, new TrainingState { Step = 30 }, engine));
    }
}
