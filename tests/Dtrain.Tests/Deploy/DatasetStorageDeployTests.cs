using System.Diagnostics;
using Dtrain.Tests.Support;
using YamlDotNet.RepresentationModel;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// Where the containers find datasets (docs/storage.md): compose's coordinator and workers mount the user's `datasets`
/// volume read-only at /datasets, which is the coordinator's data root (jobs name datasets there), and the `uploads`
/// volume at /uploads, read-write only in the coordinator, which prepares uploads into it (its shared data directory; the
/// image owns both mount points, so new volumes are writable by its user); the workers pass S3 settings through, and the
/// optional `s3` service runs only in its profile. On Kubernetes the workers take the optional Secret dtrain-s3, and the
/// datasets component (rendered with `kubectl kustomize` from a copy of deploy/k8s with it enabled, as a user would) adds
/// the same two mounts: a ReadOnlyMany claim at /datasets (the coordinator's --data-root) and a ReadWriteMany one at
/// /uploads (its --shared-data-dir), read-only in the workers.
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
    public void Compose_mounts_the_datasets_volume_read_only_as_the_coordinators_data_root_the_coordinator_prepares_uploads_into_the_uploads_volume_and_the_s3_service_is_only_in_its_profile()
    {
        var compose = Load(File.ReadAllText(RepoFiles.PathOf("deploy", "docker-compose.yml")));
        var worker = At(compose, "services", "worker");
        var workerVolumes = Seq(worker, "volumes").Select(v => ((YamlScalarNode)v).Value).ToList();
        Assert.Contains("datasets:/datasets:ro", workerVolumes);
        Assert.Contains("uploads:/uploads:ro", workerVolumes);
        Assert.NotNull(At(compose, "volumes", "datasets"));
        Assert.NotNull(At(compose, "volumes", "uploads"));

        // The coordinator reads the user's datasets (its data root, read-only: it never writes there) and writes the
        // datasets it prepares from uploads into the other volume, which the workers read at the same path.
        var coordinator = At(compose, "services", "coordinator");
        var coordinatorVolumes = Seq(coordinator, "volumes").Select(v => ((YamlScalarNode)v).Value).ToList();
        Assert.Contains("datasets:/datasets:ro", coordinatorVolumes);
        Assert.Contains("uploads:/uploads", coordinatorVolumes);
        Assert.Equal("/datasets", Str(coordinator, "environment", "DTRAIN_Coordinator__DataRoots__0"));
        Assert.Null(Str(coordinator, "environment", "DTRAIN_Coordinator__DataRoots__1"));
        var shared = Str(coordinator, "environment", "DTRAIN_Coordinator__SharedDataDir");
        Assert.True(shared is "/uploads", $"the coordinator's SharedDataDir is \"{shared}\", not the uploads volume's /uploads");
        AssertPreparesUploads("/datasets", shared, DataDirOfTheImage());
        // A new named volume takes the owner of the image's directory it is mounted on: the image's user (10001) must own
        // /datasets (the documented recipe copies datasets into a fresh volume as that user) and /uploads (the
        // coordinator, that user, writes its prepared uploads there).
        var dockerfile = File.ReadAllText(RepoFiles.PathOf("deploy", "Dockerfile"));
        foreach (var dir in new[] { "/datasets", "/uploads" })
        {
            Assert.Matches($@"mkdir -p [^;]*{dir}[ ;]", dockerfile);
            Assert.Matches($@"chown dtrain:dtrain [^;]*{dir}[ ;]", dockerfile);
        }
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
    public void Kubernetes_workers_take_the_optional_s3_secret_and_the_datasets_component_shares_a_read_only_datasets_claim_and_a_read_write_many_uploads_claim()
    {
        using var tmp = new TempDir();
        var copy = Path.Combine(tmp.Path, "k8s");
        CopyDirectory(RepoFiles.PathOf("deploy", "k8s"), copy);
        var plain = Render(copy);
        Assert.DoesNotContain(plain, d => Str(d, "kind") == "PersistentVolumeClaim");
        var secret = Assert.Single(Seq(WorkerContainer(plain), "envFrom"), e => At(e, "secretRef") is not null);
        Assert.Equal("dtrain-s3", Str(secret, "secretRef", "name"));
        Assert.Equal("true", Str(secret, "secretRef", "optional"));

        // Enabled as kustomization.yaml says: uncomment `components: [datasets]`.
        var kustomization = Path.Combine(copy, "kustomization.yaml");
        var text = File.ReadAllText(kustomization);
        Assert.Contains("# components:\n#   - datasets\n", text);
        File.WriteAllText(kustomization, text.Replace("# components:\n#   - datasets\n", "components:\n  - datasets\n", StringComparison.Ordinal));
        var docs = Render(copy);
        // The user's datasets: read by any number of pods on any nodes, written by none of them.
        var claim = Assert.Single(docs, d => Str(d, "kind") == "PersistentVolumeClaim" && Str(d, "metadata", "name") == "dtrain-datasets");
        Assert.Equal(["ReadOnlyMany"], Seq(claim, "spec", "accessModes").Select(m => ((YamlScalarNode)m).Value));
        // The prepared uploads: one writer (the coordinator) and any number of readers.
        var uploads = Assert.Single(docs, d => Str(d, "kind") == "PersistentVolumeClaim" && Str(d, "metadata", "name") == "dtrain-uploads");
        Assert.Equal(["ReadWriteMany"], Seq(uploads, "spec", "accessModes").Select(m => ((YamlScalarNode)m).Value));

        var workers = Assert.Single(docs, d => Str(d, "kind") == "Deployment" && Str(d, "metadata", "name") == "dtrain-worker");
        foreach (var (path, claimName) in new[] { ("/datasets", "dtrain-datasets"), ("/uploads", "dtrain-uploads") })
        {
            var (mount, volume) = Mounted(workers, path);
            Assert.Equal("true", Str(mount, "readOnly"));
            Assert.Equal(claimName, Str(volume, "persistentVolumeClaim", "claimName"));
            Assert.Equal("true", Str(volume, "persistentVolumeClaim", "readOnly"));
        }

        // The coordinator mounts the datasets read-only as its data root, and the uploads claim read-write at the
        // workers' path as its shared data directory.
        var coordinator = Assert.Single(docs, d => Str(d, "kind") == "StatefulSet");
        var (datasetsMount, datasetsVolume) = Mounted(coordinator, "/datasets");
        Assert.Equal("true", Str(datasetsMount, "readOnly"));
        Assert.Equal("dtrain-datasets", Str(datasetsVolume, "persistentVolumeClaim", "claimName"));
        Assert.Equal("true", Str(datasetsVolume, "persistentVolumeClaim", "readOnly"));
        var (uploadsMount, uploadsVolume) = Mounted(coordinator, "/uploads");
        Assert.NotEqual("true", Str(uploadsMount, "readOnly"));
        Assert.Equal("dtrain-uploads", Str(uploadsVolume, "persistentVolumeClaim", "claimName"));
        Assert.NotEqual("true", Str(uploadsVolume, "persistentVolumeClaim", "readOnly"));
        var container = Assert.Single(Seq(coordinator, "spec", "template", "spec", "containers"));
        var args = Seq(container, "args").Select(a => ((YamlScalarNode)a).Value!).ToList();
        string Flag(string name)
        {
            var at = args.IndexOf(name);
            Assert.True(at >= 0 && at + 1 < args.Count && args.LastIndexOf(name) == at, $"the coordinator has no single {name}: [{string.Join(' ', args)}]");
            return args[at + 1];
        }
        Assert.Equal("/datasets", Flag("--data-root"));
        Assert.Equal("/uploads", Flag("--shared-data-dir"));
        AssertPreparesUploads(Flag("--data-root"), Flag("--shared-data-dir"), Flag("--data-dir"));

        // Without the component the coordinator has neither the mount nor a shared data directory (uploads in memory).
        var plainCoordinator = Assert.Single(Seq(Assert.Single(plain, d => Str(d, "kind") == "StatefulSet"), "spec", "template", "spec", "containers"));
        Assert.DoesNotContain(Seq(plainCoordinator, "volumeMounts"), m => Str(m, "mountPath") is "/datasets" or "/uploads");
        Assert.DoesNotContain("--shared-data-dir", Seq(plainCoordinator, "args").Select(a => ((YamlScalarNode)a).Value));
        Assert.DoesNotContain("--data-root", Seq(plainCoordinator, "args").Select(a => ((YamlScalarNode)a).Value));
        Assert.DoesNotContain(plain, d => Str(d, "kind") == "ConfigMap" && At(d, "data") is YamlMappingNode m && m.Children.Keys.Any(k => k.ToString().Contains("SharedDataDir", StringComparison.Ordinal)));
    }

    /// <summary>
    /// A shared data directory inside the volume a data root would naturally cover (e.g. DIR/uploads beside the datasets
    /// in DIR): a data root over it, or inside it, would let any job name another job's prepared upload as its dataset,
    /// so it is refused naming both; a directory beside it is allowed (hence compose's separate `uploads` volume).
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

    /// <summary>
    /// The coordinator accepts the data root, the shared data directory and its data directory together (a data root
    /// over the shared data directory would be refused), and uploads are then not limited to 1 GiB. The three are made
    /// under a temporary directory at the same relative places (a data root must exist).
    /// </summary>
    static void AssertPreparesUploads(string dataRoot, string sharedDataDir, string dataDir)
    {
        using var tmp = new TempDir();
        string At(string path)
        {
            Assert.True(Path.IsPathRooted(path), $"\"{path}\" is not an absolute path");
            return Path.Join(tmp.Path, path);
        }
        Directory.CreateDirectory(At(dataRoot));
        var options = new Dtrain.Server.CoordinatorOptions { DataDir = At(dataDir), DataRoots = [At(dataRoot)], SharedDataDir = At(sharedDataDir) };
        Assert.Empty(options.Validate());
        Assert.True(options.PreparesUploads);
        Assert.Equal(options.MaxPendingUploadBytes, options.UploadLimit);
        Assert.True(options.UploadLimit > Dtrain.Data.DataFile.DefaultMaxBytes);
    }

    /// <summary>The pod template's single container's mount at <paramref name="path"/> and the volume it mounts.</summary>
    static (YamlNode Mount, YamlNode Volume) Mounted(YamlNode workload, string path)
    {
        var container = Assert.Single(Seq(workload, "spec", "template", "spec", "containers"));
        var mount = Assert.Single(Seq(container, "volumeMounts"), m => Str(m, "mountPath") == path);
        var volume = Assert.Single(Seq(workload, "spec", "template", "spec", "volumes"), v => Str(v, "name") == Str(mount, "name"));
        return (mount, volume);
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
