using Dtrain.Cli;
using Dtrain.Dashboard;
using Dtrain.Server;
using Dtrain.Worker;

namespace Dtrain.Tests.Deploy;

/// <summary>
/// The three assemblies README's layout names: the `dtrain` executable (src/Cli) composes the coordinator server
/// (src/Coordinator) and the worker (src/Worker), which know nothing of each other or of the command line.
/// </summary>
public class AssemblyLayoutTests
{
    static readonly System.Reflection.Assembly Cli = typeof(DtrainCli).Assembly;
    static readonly System.Reflection.Assembly Coordinator = typeof(JobManager).Assembly;
    static readonly System.Reflection.Assembly Worker = typeof(WorkerHost).Assembly;

    static string[] References(System.Reflection.Assembly a) => [.. a.GetReferencedAssemblies().Select(r => r.Name!)];

    [Fact]
    public void The_dtrain_executable_is_the_CLI_and_composes_the_coordinator_and_the_worker()
    {
        Assert.Equal("dtrain", Cli.GetName().Name);
        Assert.NotNull(Cli.EntryPoint);
        Assert.Equal("Dtrain.Coordinator", Coordinator.GetName().Name);
        Assert.Equal("Dtrain.Worker", Worker.GetName().Name);
        Assert.Contains("Dtrain.Coordinator", References(Cli));
        Assert.Contains("Dtrain.Worker", References(Cli));
        Assert.True(File.Exists(Path.Combine(AppContext.BaseDirectory, "dtrain.runtimeconfig.json")), "dtrain.runtimeconfig.json beside dtrain.dll");
    }

    [Fact]
    public void The_coordinator_and_the_worker_are_libraries_that_do_not_reference_each_other_or_the_CLI()
    {
        Assert.Null(Coordinator.EntryPoint);
        Assert.Null(Worker.EntryPoint);
        Assert.DoesNotContain("Dtrain.Worker", References(Coordinator));
        Assert.DoesNotContain("dtrain", References(Coordinator));
        Assert.DoesNotContain("Dtrain.Coordinator", References(Worker));
        Assert.DoesNotContain("dtrain", References(Worker));
    }

    [Fact]
    public void The_dashboard_files_travel_inside_the_coordinator_assembly()
    {
        Assert.Same(Coordinator, typeof(DashboardEndpoints).Assembly);
        var names = Coordinator.GetManifestResourceNames();
        Assert.Contains("dashboard/index.html", names);
        Assert.Contains("dashboard/login.html", names);
        Assert.Contains(names, n => n.StartsWith("dashboard/vendor/uplot/", StringComparison.Ordinal));
    }
}
