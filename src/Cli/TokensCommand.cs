using System.CommandLine;
using System.Globalization;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Microsoft.Extensions.Logging.Abstractions;
using Spectre.Console;

namespace Dtrain.Cli;

/// <summary>
/// `dtrain tokens create|list|revoke`: the coordinator's bearer tokens, managed where its data directory is (on its
/// host, or in its container/pod: `docker compose exec coordinator dtrain tokens create ...`), as torchrun and Ray
/// operators expect. A running coordinator picks changes up at the next call; every change is audited.
/// </summary>
public static class TokensCommand
{
    public static Command Create()
    {
        var cmd = new Command("tokens",
            "Manage the coordinator's bearer tokens in DATA_DIR/tokens.json (run it where the coordinator's data directory is: its host, or `docker compose exec coordinator dtrain tokens ...`). " +
            "Roles: submitter (submits; sees, watches, cancels, downloads its own jobs), viewer (reads every job and the workers), admin (everything), metrics (only scrapes Prometheus /metrics and /metrics/targets).");
        cmd.Subcommands.Add(CreateToken());
        cmd.Subcommands.Add(List());
        cmd.Subcommands.Add(Revoke());
        return cmd;
    }

    static Option<string?> DataDirOption() => new("--data-dir")
    {
        Description = "The coordinator's data directory (default: as `dtrain serve`: DTRAIN_Coordinator__DataDir or appsettings.json, else .dtrain/coordinator).",
    };

    static string DataDir(ParseResult r, Option<string?> option) => r.GetValue(option) is { } dir
        ? CliPaths.DirectoryToUse(dir, "--data-dir", "the coordinator's data directory")
        : CliPaths.DirectoryToUse(CoordinatorHost.ReadOptions([]).DataDir, "Coordinator:DataDir", "the coordinator's data directory");

    static AuditLog Audit(string dataDir) => new(dataDir, NullLogger.Instance, TimeProvider.System);

    static (string, object?) By() => ("by", $"local user {Environment.UserName} (dtrain tokens)");

    static Command CreateToken()
    {
        var role = new Option<string>("--role") { Description = "submitter, viewer, admin or metrics.", Required = true };
        role.AcceptOnlyFromAmong([.. Roles.Names]);
        var name = new Option<string>("--name") { Description = "Who holds the token: the owner recorded on the jobs it submits (letters, digits, ._@-). Several tokens may share a name (rotation); they share its jobs.", Required = true };
        var output = new Option<string?>("--output", "-o") { Description = "Write the token to this file (mode 0600, usable with --token-file) instead of printing it." };
        var dataDir = DataDirOption();
        var cmd = new Command("create", "Create a token; prints it once on stdout (only its SHA-256 is stored): export DTRAIN_TOKEN=$(dtrain tokens create --role submitter --name alice)");
        foreach (var o in new Option[] { role, name, output, dataDir }) cmd.Options.Add(o);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var dir = DataDir(r, dataDir);
            // Before the token is created: a token stored but not written anywhere is a token nobody has.
            var tokenFile = r.GetValue(output) is { Length: > 0 } o ? CliPaths.FileToWrite(o, "--output", "token") : null;
            // A new file, as documented: replacing one would lose the secret of the token it holds (still active).
            if (tokenFile is not null && File.Exists(tokenFile))
                throw new ArgumentException($"--output: {tokenFile} already exists (it may hold another token's secret); give a new file, or delete it first");
            Roles.TryParse(r.GetValue(role), out var parsed);
            var (entry, secret) = TokenStore.Create(dir, r.GetValue(name)!, parsed, DateTimeOffset.UtcNow);
            Audit(dir).Write("token.create", null, "local", ("id", entry.Id), ("name", entry.Name), ("role", entry.Role), By());
            if (tokenFile is { } file)
            {
                SecureFiles.WriteAtomically(file, System.Text.Encoding.ASCII.GetBytes(secret + "\n"));
                Console.Error.WriteLine($"created token {entry.Id} \"{entry.Name}\" ({entry.Role}) in {TokenStore.PathIn(dir)}; written to {file} (mode 0600): use --token-file {file} or DTRAIN_TOKEN_FILE");
            }
            else
            {
                Console.Error.WriteLine($"created token {entry.Id} \"{entry.Name}\" ({entry.Role}) in {TokenStore.PathIn(dir)}; it is shown only now:");
                Console.WriteLine(secret);
            }
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command List()
    {
        var dataDir = DataDirOption();
        var cmd = new Command("list", "List the tokens (id, name, role, created, revoked); secrets are not stored and cannot be shown.");
        cmd.Options.Add(dataDir);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var path = TokenStore.PathIn(DataDir(r, dataDir));
            var tokens = TokenStore.Load(path);
            if (tokens.Count == 0)
            {
                Console.WriteLine($"no tokens in {path}");
                return CliErrors.Ok;
            }
            var table = new Table().AddColumns("id", "name", "role", "created (UTC)", "state");
            foreach (var t in tokens)
                table.AddRow(t.Id, Markup.Escape(t.Name), t.Role, Time(t.Created), t.Revoked is { } when ? $"revoked {Time(when)}" : "active");
            AnsiConsole.Write(table);
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static Command Revoke()
    {
        var target = new Argument<string>("token") { Description = "A token id (tok-...) to revoke that token, or a name to revoke every active token of that name." };
        var dataDir = DataDirOption();
        var cmd = new Command("revoke", "Revoke tokens: a running coordinator refuses them from its next call on.");
        cmd.Arguments.Add(target);
        cmd.Options.Add(dataDir);
        cmd.SetAction(r => CliErrors.Guard(() =>
        {
            var dir = DataDir(r, dataDir);
            var result = TokenStore.Revoke(dir, r.GetValue(target)!, DateTimeOffset.UtcNow);
            var audit = Audit(dir);
            foreach (var t in result.Revoked)
            {
                audit.Write("token.revoke", null, "local", ("id", t.Id), ("name", t.Name), ("role", t.Role), By());
                Console.WriteLine($"revoked {t.Id} \"{t.Name}\" ({t.Role})");
            }
            foreach (var t in result.AlreadyRevoked)
                Console.WriteLine($"{t.Id} \"{t.Name}\" ({t.Role}) was already revoked at {Time(t.Revoked!.Value)} UTC");
            return CliErrors.Ok;
        }));
        return cmd;
    }

    static string Time(DateTimeOffset t) => t.UtcDateTime.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture);
}
