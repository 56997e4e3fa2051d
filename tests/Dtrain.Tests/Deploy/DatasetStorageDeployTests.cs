using System.Diagnostics;
using Dtrain.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// Where the containers find datasets (docs/storage.md): compose workers mount the shared `datasets` volume read-only
/// and pass S3 settings through, the coordinator mounts it read-write and prepares uploads into a shared data directory
/// in it (the image owns /datasets, so a new volume is writable by its user), and the optional `s3` service runs only in
/// its profile; on Kubernetes the workers take the optional Secret dtrain-s3, and the datasets component (rendered with
/// `kubectl kustomize` from a copy of deploy/k8s with it enabled, as a user would) adds a ReadWriteMany claim mounted
/// read-only at /datasets in the workers and read-write in the coordinator, which then has a shared data directory there.
/// </summary>
public class DatasetStorageDeployTests
{
    static YamlMappingNode Load(string text)
    {
        var yaml = new YamlStream();
        yaml.Load(new StringReader(text));
        return (YamlMappingNode)yaml.Documents[0].RootNode;
    }

    static YamlNode? At(YamlNode? node, params string[] keys)
    {
        foreach (var k in keys)
            if (node is not YamlMappingNode map || !map.Children.TryGetValue(new YamlScalarNode(k), out node)) return null;
        return node;
    }

    static string? Str(YamlNode? node, params string[] keys) => (At(node, keys) as YamlScalarNode)?.Value;

    static IEnumerable<YamlNode> Seq(YamlNode? node, params string[] keys) => At(node, keys) is YamlSequenceNode s ? s.Children : [];

    [Fact]
    public void Compose_workers_mount_the_datasets_volume_read_only_the_coordinator_prepares_uploads_into_it_and_the_s3_service_is_only_in_its_profile()
    {
        var compose = Load(File.ReadAllText(RepoFiles.PathOf("deploy", "docker-compose.yml")));
        var worker = At(compose, "services", "worker");
        Assert.Contains("datasets:/datasets:ro", Seq(worker, "volumes").Select(v => ((YamlScalarNode)v).Value));
        Assert.NotNull(At(compose, "volumes", "datasets"));

        // The coordinator writes the datasets it prepares from uploads into the same volume, which the workers read.
        var coordinator = At(compose, "services", "coordinator");
        Assert.Contains("datasets:/datasets", Seq(coordinator, "volumes").Select(v => ((YamlScalarNode)v).Value));
        var shared = Str(coordinator, "environment", "DTRAIN_Coordinator__SharedDataDir");
        Assert.True(shared is not null && shared.StartsWith("/datasets/", StringComparison.Ordinal), $"the coordinator's SharedDataDir is \"{shared}\", not in the datasets volume");
        AssertPreparesUploads(shared, DataDirOfTheImage());
        // A new named volume takes the owner of the image's directory it is mounted on: the image's user (10001) must own
        // /datasets, or the coordinator (that user) cannot create its shared data directory in a fresh volume.
        var dockerfile = File.ReadAllText(RepoFiles.PathOf("deploy", "Dockerfile"));
        Assert.Matches(@"mkdir -p [^;]*/datasets[ ;]", dockerfile);
        Assert.Matches(@"chown dtrain:dtrain [^;]*/datasets[ ;]", dockerfile);
        Assert.Contains("USER 10001:10001", dockerfile);
        foreach (var variable in new[] { "DTRAIN_S3_ENDPOINT", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION" })
            Assert.Equal($"${{{variable}:-}}", Str(worker, "environment", variable));
        var s3 = At(compose, "services", "s3");
        Assert.Equal(["s3"], Seq(s3, "profiles").Select(p => ((YamlScalarNode)p).Value));
        Assert.StartsWith("${DTRAIN_S3_IMAGE:-dtrain-s3:", Str(s3, "image"));
        Assert.NotNull(Str(s3, "environment", "S3_SERVER_SECRET_KEY"));
        // The image's entry point is the same server the tests run.
        var s3Dockerfile = File.ReadAllText(RepoFiles.PathOf("deploy", "s3.Dockerfile"));
        Assert.Contains("ENTRYPOINT [\"node\", \"/opt/s3-server/app/server.js\"", s3Dockerfile);
    }

    [Fact]
    public void Kubernetes_workers_take_the_optional_s3_secret_and_the_datasets_component_shares_a_read_write_many_claim_the_coordinator_prepares_uploads_into()
    {
        using var tmp = new TempDir();
        var copy = Path.Combine(tmp.Path, "k8s");
        CopyDirectory(RepoFiles.PathOf("deploy", "k8s"), copy);
        var plain = Render(copy);
        Assert.DoesNotContain(plain, d => Str(d, "kind") == "PersistentVolumeClaim" && Str(d, "metadata", "name") == "dtrain-datasets");
        var secret = Assert.Single(Seq(WorkerContainer(plain), "envFrom"), e => At(e, "secretRef") is not null);
        Assert.Equal("dtrain-s3", Str(secret, "secretRef", "name"));
        Assert.Equal("true", Str(secret, "secretRef", "optional"));

        // Enabled as kustomization.yaml says: uncomment `components: [datasets]`.
        var kustomization = Path.Combine(copy, "kustomization.yaml");
        var text = File.ReadAllText(kustomization);
        Assert.Contains("# components:\n#   - datasets\n", text);
        File.WriteAllText(kustomization, text.Replace("# components:\n#   - datasets\n", "components:\n  - datasets\n", StringComparison.Ordinal));
        var docs = Render(copy);
        var claim = Assert.Single(docs, d => Str(d, "kind") == "PersistentVolumeClaim" && Str(d, "metadata", "name") == "dtrain-datasets");
        // One writer (the coordinator) and any number of readers on any nodes.
        Assert.Equal(["ReadWriteMany"], Seq(claim, "spec", "accessModes").Select(m => ((YamlScalarNode)m).Value));
        var mount = Assert.Single(Seq(WorkerContainer(docs), "volumeMounts"), m => Str(m, "mountPath") == "/datasets");
        Assert.Equal("true", Str(mount, "readOnly"));
        var workers = Assert.Single(docs, d => Str(d, "kind") == "Deployment" && Str(d, "metadata", "name") == "dtrain-worker");
        var volume = Assert.Single(Seq(workers, "spec", "template", "spec", "volumes"), v => Str(v, "name") == Str(mount, "name"));
        Assert.Equal("dtrain-datasets", Str(volume, "persistentVolumeClaim", "claimName"));
        Assert.Equal("true", Str(volume, "persistentVolumeClaim", "readOnly"));

        // The coordinator mounts the same claim read-write at the same path and prepares uploads into a directory in it.
        var coordinator = Assert.Single(docs, d => Str(d, "kind") == "StatefulSet");
        var container = Assert.Single(Seq(coordinator, "spec", "template", "spec", "containers"));
        var coordinatorMount = Assert.Single(Seq(container, "volumeMounts"), m => Str(m, "mountPath") == "/datasets");
        Assert.NotEqual("true", Str(coordinatorMount, "readOnly"));
        var coordinatorVolume = Assert.Single(Seq(coordinator, "spec", "template", "spec", "volumes"), v => Str(v, "name") == Str(coordinatorMount, "name"));
        Assert.Equal("dtrain-datasets", Str(coordinatorVolume, "persistentVolumeClaim", "claimName"));
        Assert.NotEqual("true", Str(coordinatorVolume, "persistentVolumeClaim", "readOnly"));
        var args = Seq(container, "args").Select(a => ((YamlScalarNode)a).Value!).ToList();
        var at = args.IndexOf("--shared-data-dir");
        Assert.True(at >= 0 && at + 1 < args.Count, $"the coordinator has no --shared-data-dir: [{string.Join(' ', args)}]");
        Assert.StartsWith("/datasets/", args[at + 1], StringComparison.Ordinal);
        AssertPreparesUploads(args[at + 1], args[args.IndexOf("--data-dir") + 1]);

        // Without the component the coordinator has neither the mount nor a shared data directory (uploads in memory).
        var plainCoordinator = Assert.Single(Seq(Assert.Single(plain, d => Str(d, "kind") == "StatefulSet"), "spec", "template", "spec", "containers"));
        Assert.DoesNotContain(Seq(plainCoordinator, "volumeMounts"), m => Str(m, "mountPath") == "/datasets");
        Assert.DoesNotContain("--shared-data-dir", Seq(plainCoordinator, "args").Select(a => ((YamlScalarNode)a).Value));
        Assert.DoesNotContain(plain, d => Str(d, "kind") == "ConfigMap" && At(d, "data") is YamlMappingNode m && m.Children.Keys.Any(k => k.ToString().Contains("SharedDataDir", StringComparison.Ordinal)));
    }

    /// <summary>
    /// The shared data directory lives in the volume a data root would naturally cover (compose: /datasets/uploads in the
    /// `datasets` volume): a data root over it, or inside it, would let any job name another job's prepared upload as its
    /// dataset, so it is refused naming both; a directory beside it is allowed.
    /// </summary>
    [Fact]
    public void A_data_root_overlapping_the_shared_data_directory_is_refused_naming_both()
    {
        using var tmp = new TempDir();
        var dataDir = Directory.CreateDirectory(Path.Combine(tmp.Path, "coordinator")).FullName;
        var volume = Directory.CreateDirectory(Path.Combine(tmp.Path, "datasets")).FullName;
        var shared = Path.Combine(volume, "uploads");
        var options = new Dtrain.Server.CoordinatorOptions { DataDir = dataDir, SharedDataDir = shared };
        var over = Assert.Single((options with { DataRoots = [volume] }).Validate());
        Assert.Equal($"Coordinator:DataRoots: \"{volume}\" overlaps the shared data directory \"{shared}\" (Coordinator:SharedDataDir): jobs could read the datasets other jobs' uploads were prepared into; allow a directory apart from it", over);
        var job = Directory.CreateDirectory(Path.Combine(shared, "job-0001")).FullName;
        Assert.Contains((options with { DataRoots = [job] }).Validate(), e => e.Contains("overlaps the shared data directory", StringComparison.Ordinal));
        Assert.Empty((options with { DataRoots = [Directory.CreateDirectory(Path.Combine(volume, "mine")).FullName] }).Validate());
        // Without a shared data directory the volume may be a data root.
        Assert.Empty(new Dtrain.Server.CoordinatorOptions { DataDir = dataDir, DataRoots = [volume] }.Validate());
    }

    /// <summary>The data directory the image gives the coordinator (DTRAIN_Coordinator__DataDir in deploy/Dockerfile).</summary>
    static string DataDirOfTheImage()
    {
        var match = System.Text.RegularExpressions.Regex.Match(File.ReadAllText(RepoFiles.PathOf("deploy", "Dockerfile")), @"DTRAIN_Coordinator__DataDir=(\S+)");
        Assert.True(match.Success, "deploy/Dockerfile sets no DTRAIN_Coordinator__DataDir");
        return match.Groups[1].Value;
    }

    /// <summary>The coordinator accepts the shared data directory with its data directory, and uploads are then not limited to 1 GiB.</summary>
    static void AssertPreparesUploads(string sharedDataDir, string dataDir)
    {
        var options = new Dtrain.Server.CoordinatorOptions { DataDir = dataDir, SharedDataDir = sharedDataDir };
        Assert.Empty(options.Validate());
        Assert.True(options.PreparesUploads);
        Assert.Equal(options.MaxPendingUploadBytes, options.UploadLimit);
        Assert.True(options.UploadLimit > Dtrain.Data.DataFile.DefaultMaxBytes);
    }

    static YamlNode WorkerContainer(IReadOnlyList<YamlMappingNode> docs) =>
        Assert.Single(Seq(Assert.Single(docs, d => Str(d, "kind") == "Deployment" && Str(d, "metadata", "name") == "dtrain-worker"), "spec", "template", "spec", "containers"));

    static void CopyDirectory(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.EnumerateFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
        foreach (var dir in Directory.EnumerateDirectories(from)) CopyDirectory(dir, Path.Combine(to, Path.GetFileName(dir)));
    }

    static List<YamlMappingNode> Render(string directory)
    {
        var psi = new ProcessStartInfo("kubectl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add("kustomize");
        psi.ArgumentList.Add(directory);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("kubectl did not start");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"kubectl kustomize {directory}: exit {p.ExitCode}\n{stderr.Result}");
        var stream = new YamlStream();
        stream.Load(new StringReader(stdout.Result));
        return [.. stream.Documents.Select(d => (YamlMappingNode)d.RootNode)];
    }
}
