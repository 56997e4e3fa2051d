using System.Text.RegularExpressions;
using Dtrain.Tests.Support;

namespace Dtrain.Tests.Cli;

/// <summary>What users read: --help texts and the deployment guide say each thing once, in plain grammar.</summary>
public class HelpAndDocsTextTests
{
    [Fact]
    public void Certs_help_says_how_long_certificates_are_valid_in_plain_grammar()
    {
        using var tmp = new TempDir();
        var init = CliRunner.Run(tmp.Path, "certs", "init", "--help");
        Assert.True(init.ExitCode == 0, init.ToString());
        Assert.DoesNotContain("are is", init.Stdout);
        Assert.Contains("client certificates are valid", init.Stdout);
        var issue = CliRunner.Run(tmp.Path, "certs", "issue", "--help");
        Assert.True(issue.ExitCode == 0, issue.ToString());
        Assert.Contains("the certificate is valid", issue.Stdout);
    }

    /// <summary>A paragraph pasted twice (half-edited) shows as a run of 12 words that occurs more than once outside code blocks.</summary>
    [Fact]
    public void The_deployment_guide_repeats_no_passage()
    {
        var text = Regex.Replace(File.ReadAllText(RepoFiles.PathOf("docs", "deploy.md")), "```.*?```", " ", RegexOptions.Singleline);
        var words = text.Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var repeated = new List<string>();
        for (var i = 0; i + 12 <= words.Length; i++)
        {
            var run = string.Join(' ', words, i, 12);
            if (!seen.Add(run)) repeated.Add(run);
        }
        Assert.True(repeated.Count == 0, "docs/deploy.md repeats: " + string.Join(" | ", repeated.Take(3)));
    }
}
