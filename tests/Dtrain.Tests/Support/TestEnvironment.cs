using System.Runtime.CompilerServices;

namespace Dtrain.Tests.Support;

/// <summary>Process-wide test set-up: one intra-op torch thread, since xunit runs test classes in parallel on 2 cores.</summary>
internal static class TestEnvironment
{
    [ModuleInitializer]
    internal static void Init() => TorchSharp.torch.set_num_threads(1);
}

/// <summary>Paths in the repository (found by walking up to Distributed.sln) and a scratch directory per test.</summary>
public static class Repo
{
    public static string Root { get; } = Find();

    public static string PathOf(params string[] parts) => Path.Combine([Root, .. parts]);

    private static string Find()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Distributed.sln"))) dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException("Distributed.sln not found above " + AppContext.BaseDirectory);
    }
}

public sealed class Scratch : IDisposable
{
    public string Dir { get; } = Directory.CreateTempSubdirectory("dtrain-test-").FullName;

    public string Write(string name, string content)
    {
        var path = Path.Combine(Dir, name);
        File.WriteAllText(path, content);
        return path;
    }

    public void Dispose()
    {
        try { Directory.Delete(Dir, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
    }
}
