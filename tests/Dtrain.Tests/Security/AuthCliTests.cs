using Dtrain.Protos.Jobs;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Support;
using static Dtrain.Tests.Security.AuthTestSupport;

namespace Dtrain.Tests.Security;

/// <summary>The real `dtrain` CLI: `dtrain tokens`, where the remote verbs take their token from, and what they print when refused.</summary>
public class AuthCliTests
{
    /// <summary>Runs the CLI with a private HOME and config directory and no token or coordinator from the test's environment.</summary>
    static CliRunner.Result Cli(TempDir tmp, IDictionary<string, string?>? env, params string[] args)
    {
        var environment = new Dictionary<string, string?>
        {
            ["HOME"] = tmp.Path,
            ["XDG_CONFIG_HOME"] = Path.Combine(tmp.Path, ".config"),
            ["DTRAIN_TOKEN"] = null,
            ["DTRAIN_TOKEN_FILE"] = null,
            ["DTRAIN_COORDINATOR"] = null,
        };
        foreach (var (k, v) in env ?? new Dictionary<string, string?>()) environment[k] = v;
        return CliRunner.Run(tmp.Path, TimeSpan.FromMinutes(3), environment, args);
    }

    static string WriteSecret(TempDir tmp, string name, string content, UnixFileMode mode)
    {
        var path = tmp.Write(name, content);
        File.SetUnixFileMode(path, mode);
        return path;
    }

    [Fact]
    public void Tokens_create_prints_the_secret_once_stores_its_hash_lists_and_revokes_and_audits_each_change()
    {
        using var tmp = new TempDir();
        var data = Path.Combine(tmp.Path, "coordinator");

        var create = Cli(tmp, null, "tokens", "create", "--role", "submitter", "--name", "alice", "--data-dir", data);
        Assert.True(create.ExitCode == 0, create.ToString());
        var secret = create.Stdout.Trim();
        Assert.Matches("^dtr_[A-Za-z0-9_-]{43}$", secret);
        Assert.Contains("\"alice\" (submitter)", create.Stderr);
        var path = TokenStore.PathIn(data);
        Assert.DoesNotContain(secret, File.ReadAllText(path));
        Assert.Equal(SecureFiles.OwnerOnly, File.GetUnixFileMode(path));
        var entry = Assert.Single(TokenStore.Load(path));
        Assert.Equal(entry.Id, TokenStore.Match([entry], secret)?.Id);

        var toFile = Cli(tmp, null, "tokens", "create", "--role", "viewer", "--name", "dash", "--data-dir", data, "--output", "dash.token");
        Assert.True(toFile.ExitCode == 0, toFile.ToString());
        Assert.Equal("", toFile.Stdout);
        Assert.Equal(SecureFiles.OwnerOnly, File.GetUnixFileMode(Path.Combine(tmp.Path, "dash.token")));
        // A second token to the same file is refused before it is made: replacing the file lost the first's secret.
        var first = File.ReadAllText(Path.Combine(tmp.Path, "dash.token"));
        var again = Cli(tmp, null, "tokens", "create", "--role", "viewer", "--name", "dash2", "--data-dir", data, "--output", "dash.token");
        Assert.True(again.ExitCode == 2, again.ToString());
        Assert.Contains("already exists", again.Stderr);
        Assert.Equal(first, File.ReadAllText(Path.Combine(tmp.Path, "dash.token")));
        Assert.Equal(2, TokenStore.Load(path).Count);

        var list = Cli(tmp, null, "tokens", "list", "--data-dir", data);
        Assert.True(list.ExitCode == 0, list.ToString());
        Assert.Contains(entry.Id, list.Stdout);
        Assert.Contains("submitter", list.Stdout);
        Assert.Contains("viewer", list.Stdout);
        Assert.DoesNotContain(secret, list.Stdout);

        var revoke = Cli(tmp, null, "tokens", "revoke", "alice", "--data-dir", data);
        Assert.True(revoke.ExitCode == 0, revoke.ToString());
        Assert.Contains($"revoked {entry.Id} \"alice\" (submitter)", revoke.Stdout);
        Assert.Contains("revoked 20", Cli(tmp, null, "tokens", "list", "--data-dir", data).Stdout);
        var unknown = Cli(tmp, null, "tokens", "revoke", "nobody", "--data-dir", data);
        Assert.Equal(2, unknown.ExitCode);
        Assert.Contains("no token with id or name \"nobody\"", unknown.Stderr);

        Assert.Single(Lines(data, "token.create", ("id", entry.Id), ("name", "alice"), ("role", "submitter")));
        Assert.Single(Lines(data, "token.create", ("name", "dash"), ("role", "viewer")));
        var revoked = Assert.Single(Lines(data, "token.revoke", ("id", entry.Id)));
        Assert.StartsWith("local user ", revoked.Field("by"));
    }

    [Fact]
    public async Task Remote_verbs_without_a_valid_token_print_one_line_and_exit_1()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);

        var none = Cli(tmp, null, "list", "--coordinator", cluster.Address);
        Assert.True(none.ExitCode == 1, none.ToString());
        var line = Assert.Single(none.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"error: coordinator {cluster.Address} requires a token: set DTRAIN_TOKEN, pass --token-file FILE, or put {{\"token\": \"...\"}} in {Path.Combine(tmp.Path, ".config", "dtrain", "config.json")}", line);

        var wrong = Cli(tmp, new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = "dtr_wrong" }, "workers", "--coordinator", cluster.Address);
        Assert.True(wrong.ExitCode == 1, wrong.ToString());
        Assert.Equal($"error: coordinator {cluster.Address} refused the token from $DTRAIN_TOKEN: the token is not valid on this coordinator (unknown token)", wrong.Stderr.Trim());

        var (_, viewer, _) = Token(cluster, "dash", Role.Viewer);
        var denied = Cli(tmp, new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = viewer }, "cancel", "job-0001", "--coordinator", cluster.Address);
        Assert.True(denied.ExitCode == 1, denied.ToString());
        Assert.Contains("has role viewer, which may not cancel jobs; that needs submitter or admin", denied.Stderr);
    }

    [Fact]
    public async Task The_token_comes_from_token_file_env_or_config_and_a_file_readable_by_others_is_refused()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var (_, secret, _) = Token(cluster, "ops", Role.Admin);
        var env = new Dictionary<string, string?>();

        var file = WriteSecret(tmp, "ops.token", secret + "\n", SecureFiles.OwnerOnly);
        var ok = Cli(tmp, env, "workers", "--coordinator", cluster.Address, "--token-file", file);
        Assert.True(ok.ExitCode == 0, ok.ToString());
        Assert.Contains("idle", ok.Stdout);
        env["DTRAIN_TOKEN_FILE"] = file;
        Assert.Equal(0, Cli(tmp, env, "workers", "--coordinator", cluster.Address).ExitCode);
        // --token-file comes first, then $DTRAIN_TOKEN, then $DTRAIN_TOKEN_FILE.
        env["DTRAIN_TOKEN"] = "dtr_wrong";
        Assert.Equal(1, Cli(tmp, env, "workers", "--coordinator", cluster.Address).ExitCode);
        Assert.Equal(0, Cli(tmp, env, "workers", "--coordinator", cluster.Address, "--token-file", file).ExitCode);
        env["DTRAIN_TOKEN"] = null;

        File.SetUnixFileMode(file, SecureFiles.OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        var open = Cli(tmp, env, "workers", "--coordinator", cluster.Address);
        Assert.True(open.ExitCode == 2, open.ToString());
        Assert.Contains($"token file {file} has permissions 0644: it holds a secret and must not be accessible by group or others; run: chmod 600 {file}", open.Stderr);

        env["DTRAIN_TOKEN_FILE"] = null;
        var config = Path.Combine(tmp.Path, ".config", "dtrain", "config.json");
        Directory.CreateDirectory(Path.GetDirectoryName(config)!);
        File.WriteAllText(config, $"{{\"token\": \"{secret}\"}}");
        File.SetUnixFileMode(config, SecureFiles.OwnerOnly);
        Assert.Equal(0, Cli(tmp, env, "workers", "--coordinator", cluster.Address).ExitCode);
        File.SetUnixFileMode(config, SecureFiles.OwnerOnly | UnixFileMode.GroupRead);
        var groupReadable = Cli(tmp, env, "workers", "--coordinator", cluster.Address);
        Assert.True(groupReadable.ExitCode == 2, groupReadable.ToString());
        Assert.Contains($"config file {config} has permissions 0640", groupReadable.Stderr);
    }

    [Fact]
    public async Task Status_and_list_show_the_owner_and_another_submitter_is_told_the_job_does_not_exist()
    {
        using var tmp = new TempDir();
        await using var cluster = await InProcessCluster.StartAsync(1);
        var alice = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = Token(cluster, "alice", Role.Submitter).Token };
        var bob = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = Token(cluster, "bob", Role.Submitter).Token };
        var admin = new Dictionary<string, string?> { ["DTRAIN_TOKEN"] = cluster.AdminToken };
        tmp.Write("t.txt", TestJobs.Text());
        tmp.Write("job.json", JobSpecSerializer.Serialize(TestJobs.CharLm("t.txt", steps: 1_000_000) with { Name = "alices" }));

        var submit = Cli(tmp, alice, "submit", "job.json", "--workers", "1", "--coordinator", cluster.Address);
        Assert.True(submit.ExitCode == 0, submit.ToString());
        var id = submit.Stdout.Trim();

        var status = Cli(tmp, alice, "status", id, "--coordinator", cluster.Address);
        Assert.True(status.ExitCode == 0, status.ToString());
        Assert.Contains("owner: alice", status.Stdout);
        var list = Cli(tmp, admin, "list", "--coordinator", cluster.Address);
        Assert.True(list.ExitCode == 0, list.ToString());
        // (Redirected, the table is 80 columns wide and wraps the id.)
        Assert.Contains("│ alice │", list.Stdout);

        var other = Cli(tmp, bob, "cancel", id, "--coordinator", cluster.Address);
        Assert.Equal(2, other.ExitCode);
        Assert.Equal($"error: no job \"{id}\"; `dtrain list` shows the known jobs", other.Stderr.Trim());
        var bobs = Cli(tmp, bob, "list", "--coordinator", cluster.Address);
        Assert.True(bobs.ExitCode == 0 && bobs.Stdout.Contains("owner") && !bobs.Stdout.Contains("alice") && !bobs.Stdout.Contains("job-"), bobs.ToString());

        var cancel = Cli(tmp, alice, "cancel", id, "--coordinator", cluster.Address);
        Assert.True(cancel.ExitCode == 0, cancel.ToString());
        Assert.Single(Lines(cluster.DataDir, "job.cancel", ("job", id), ("user", "alice")));
        // Once it has ended, cancelling says there was nothing to cancel (it printed the bare state).
        while (cluster.Client.Get(new GetJobRequest { JobId = id }).State is not (JobState.Cancelled or JobState.Succeeded or JobState.Failed)) await Task.Delay(50);
        var again = Cli(tmp, alice, "cancel", id, "--coordinator", cluster.Address);
        Assert.True(again.ExitCode == 0, again.ToString());
        Assert.Matches($@"^{id}: (cancelled|already (succeeded|failed), nothing to cancel)$", again.Stdout.Trim());
    }
}
