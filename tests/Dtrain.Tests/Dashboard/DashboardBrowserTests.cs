using Dtrain.Cli;
using Dtrain.Protos.Jobs;
using Dtrain.Server;
using Dtrain.Server.Auth;
using Dtrain.Specs;
using Dtrain.Tests.Cluster;
using Dtrain.Tests.Security;
using Dtrain.Tests.Support;
using OpenQA.Selenium;
using Xunit.Abstractions;

namespace Dtrain.Tests.Dashboard;

/// <summary>
/// The dashboard in a real browser (headless Chromium through chromedriver) against a real coordinator and workers:
/// it logs in with a token, follows a job live, draws one point per step the job reported, lists every worker; and
/// with auth on, a browser without a token gets the login page and a submitter sees only its own jobs. Screenshots
/// are kept under the test output's TestResults/browser.
/// </summary>
public class DashboardBrowserTests(ITestOutputHelper output)
{
    static readonly CoordinatorOptions WithDashboard = new() { HttpPort = 0 };

    static void LogIn(Browser browser, string web, string token, string next = "/")
    {
        browser.Driver.Navigate().GoToUrl($"{web}/login?next={Uri.EscapeDataString(next)}");
        browser.Driver.FindElement(By.Id("token")).SendKeys(token);
        browser.Driver.FindElement(By.Id("login-submit")).Click();
        browser.Wait(d => !d.Url.Contains("/login", StringComparison.Ordinal), "the login form to take the browser on");
    }

    void Keep(Browser browser, string name)
    {
        var path = browser.Screenshot(name);
        output.WriteLine($"screenshot: {path}");
        Console.WriteLine($"screenshot: {path}");
    }

    [BrowserFact]
    public async Task The_job_page_follows_a_running_job_live_with_one_point_per_reported_step_and_the_worker_table_lists_every_worker()
    {
        await using var cluster = await InProcessCluster.StartAsync(3, WithDashboard);
        var web = cluster.HttpAddress!;
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        var spec = TestJobs.CharLm("t.txt", steps: 60);
        spec = spec with { Training = spec.Training with { EvalInterval = 20, CheckpointInterval = 20 } };
        var path = tmp.Write("lm.json", JobSpecSerializer.Serialize(spec));
        using var browser = new Browser();
        LogIn(browser, web, cluster.AdminToken!);

        // The workers are cordoned first, so the job waits in the queue while the page opens: every point it then
        // draws arrives over the event stream, without a reload.
        var workerIds = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Select(w => w.WorkerId).ToList();
        foreach (var w in workerIds) cluster.Client.CordonWorker(new WorkerRequest { Worker = w });
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 3)).JobId;
        browser.Driver.Navigate().GoToUrl($"{web}/jobs/{id}");
        browser.Wait(d => d.FindElement(By.Id("job-state")).Text.Contains("queued", StringComparison.Ordinal), "the job page of the queued job");
        Assert.Equal("0", browser.Driver.FindElement(By.Id("chart-loss")).GetAttribute("data-points"));
        foreach (var w in workerIds) cluster.Client.UncordonWorker(new WorkerRequest { Worker = w });
        var info = await cluster.WaitAsync(id, TimeSpan.FromMinutes(4));
        Assert.Equal(JobState.Succeeded, info.State);
        browser.Wait(d => d.FindElement(By.TagName("body")).GetAttribute("data-job-ended") == "true", "the page to see the job end");

        var reported = cluster.Client.History(new GetJobRequest { JobId = id }).Events.Count(e => e.KindCase == JobEvent.KindOneofCase.Step);
        Assert.Equal(60, reported);
        browser.Wait(d => d.FindElement(By.Id("chart-loss")).GetAttribute("data-points") == reported.ToString(System.Globalization.CultureInfo.InvariantCulture),
            $"the loss chart to show {reported} points");
        // The chart's own data, read from the page: x = steps 1..60, the training-loss series with a value at each.
        var xs = ((IEnumerable<object>)browser.Script("return window.dtrain.charts.loss.data[0];")!).Select(Convert.ToInt64).ToList();
        Assert.Equal(Enumerable.Range(1, 60).Select(s => (long)s), xs);
        var losses = (IEnumerable<object?>)browser.Script("return window.dtrain.charts.loss.data[1];")!;
        Assert.All(losses, v => Assert.NotNull(v));
        var validation = ((IEnumerable<object?>)browser.Script("return window.dtrain.charts.loss.data[2];")!).Count(v => v is not null);
        Assert.Equal(3, validation);
        Assert.Contains("succeeded", browser.Driver.FindElement(By.Id("job-state")).Text, StringComparison.Ordinal);
        Assert.Equal(3, browser.Driver.FindElements(By.CssSelector("#checkpoints-table tbody tr")).Count);
        browser.Wait(d => d.FindElement(By.Id("sample")).Text.Length > 0, "the generated sample");
        Keep(browser, "job-page");
        Assert.Empty(browser.CspViolations());

        browser.Driver.Navigate().GoToUrl($"{web}/workers");
        var expected = cluster.Client.ListWorkers(new ListWorkersRequest()).Workers.Select(w => w.WorkerId).Order().ToList();
        browser.Wait(d => d.FindElements(By.CssSelector("#workers-table tbody tr")).Count == expected.Count, $"{expected.Count} worker rows");
        var listed = browser.Driver.FindElements(By.CssSelector("#workers-table tbody tr")).Select(r => r.GetAttribute("data-worker-id") ?? "").Order().ToList();
        Assert.Equal(expected, listed);
        Assert.Equal(3, listed.Count);
        Keep(browser, "workers-page");

        browser.Driver.Navigate().GoToUrl($"{web}/");
        browser.Wait(d => d.FindElements(By.CssSelector($"#jobs-table tr[data-job-id='{id}']")).Count == 1, "the job in the jobs table");
        Assert.Contains("60/60", browser.Driver.FindElement(By.CssSelector($"#jobs-table tr[data-job-id='{id}']")).Text, StringComparison.Ordinal);
        // A job submitted while the jobs page is open appears in it without a reload.
        var second = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 1)).JobId;
        browser.Wait(d => d.FindElements(By.CssSelector($"#jobs-table tr[data-job-id='{second}']")).Count == 1, $"{second} to appear live in the jobs table");
        Keep(browser, "jobs-page");
        cluster.Client.Cancel(new CancelJobRequest { JobId = second });
    }

    [BrowserFact]
    public async Task The_header_of_a_running_job_shows_its_real_step_at_once_and_a_single_evaluation_is_drawn()
    {
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        var web = cluster.HttpAddress!;
        using var tmp = new TempDir();
        tmp.Write("t.txt", TestJobs.Text(100));
        using var browser = new Browser();
        LogIn(browser, web, cluster.AdminToken!);

        // A job with exactly one evaluation: its validation series is a single point, drawn as a marker.
        var one = TestJobs.CharLm("t.txt", steps: 10);
        one = one with { Training = one.Training with { EvalInterval = 10, CheckpointInterval = 10 } };
        var onePath = tmp.Write("one.json", JobSpecSerializer.Serialize(one));
        var oneId = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(onePath), 1)).JobId;
        Assert.Equal(JobState.Succeeded, (await cluster.WaitAsync(oneId, TimeSpan.FromMinutes(3))).State);
        Assert.Equal(1, cluster.Client.History(new GetJobRequest { JobId = oneId }).Events.Count(e => e.KindCase == JobEvent.KindOneofCase.Eval));
        browser.Driver.Navigate().GoToUrl($"{web}/jobs/{oneId}");
        browser.Wait(d => d.FindElement(By.TagName("body")).GetAttribute("data-job-ended") == "true", "the page of the finished job");
        browser.Wait(d => d.FindElement(By.Id("chart-validation")).Displayed, "the validation chart");
        // Coloured pixels on the validation chart's canvas (the axes and grid are grey): none when the point is not drawn.
        const string coloured = """
            const c = document.querySelector('#chart-validation canvas');
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) if (px[i + 3] > 0 && Math.abs(px[i] - px[i + 1]) + Math.abs(px[i + 1] - px[i + 2]) > 60) n++;
            return n;
            """;
        var pixels = Convert.ToInt64(browser.Wait(d => browser.Script(coloured) is long n && n > 0 ? (object)n : null, "the single evaluation drawn on the validation chart", 30));
        Assert.True(pixels > 0);
        Keep(browser, "one-evaluation");

        // A long job, running: its page's header shows the step it is at from the start, and never goes back to 0 when
        // the event stream replays the job's earlier states.
        var spec = TestJobs.CharLm("t.txt", steps: 1_000_000);
        spec = spec with { Training = spec.Training with { EvalInterval = 1_000_000, CheckpointInterval = 1_000_000 } };
        var path = tmp.Write("long.json", JobSpecSerializer.Serialize(spec));
        var id = cluster.Client.Submit(JobCommands.BuildSubmit(cluster.Client, new FileInfo(path), 1)).JobId;
        long before;
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(3);
        while ((before = cluster.Client.Get(new GetJobRequest { JobId = id }).Step) < 20)
        {
            Assert.True(DateTime.UtcNow < deadline, $"{id} did not reach step 20 in 3 minutes");
            await Task.Delay(100);
        }
        browser.Driver.Navigate().GoToUrl($"{web}/jobs/{id}");
        // Once a step event at or past the step seen before the page opened has arrived, the replay is over.
        browser.Wait(d => browser.Script("return window.dtrain.lastEventStep;") is long s && s >= before, $"the event stream to reach step {before}");
        var shown = ((IEnumerable<object>)browser.Script("return window.dtrain.shownSteps;")!).Select(Convert.ToInt64).ToList();
        Assert.NotEmpty(shown);
        Assert.All(shown, s => Assert.True(s >= before, $"the header showed step {s} of a job already at step {before} (all shown: {string.Join(", ", shown)})"));
        // Read in one script call: the header is re-rendered up to once per frame while the job runs, so an element found by
        // one WebDriver call is often stale by the next (a loaded CI run timed out on StaleElementReferenceException).
        var header = browser.Wait(d => browser.Script("const e = document.getElementById('job-progress'); return e ? e.innerText : null;") as string, "the header's progress")!;
        var match = System.Text.RegularExpressions.Regex.Match(header, @"(\d+)/1000000");
        Assert.True(match.Success, $"header progress \"{header}\"");
        var step = long.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(step >= before, $"header \"{header}\" of a job at step {before}");
        // The progress bar's width is set through the CSSOM, which the Content-Security-Policy allows (no inline styles).
        Assert.NotEqual("", browser.Script("return document.querySelector('#job-progress .bar span').style.width;"));
        Assert.Empty(browser.CspViolations());
        Keep(browser, "running-job-header");
        cluster.Client.Cancel(new CancelJobRequest { JobId = id });
    }

    [BrowserFact]
    public async Task With_auth_on_a_browser_without_a_token_gets_the_login_page_and_a_submitter_sees_only_its_own_jobs()
    {
        await using var cluster = await InProcessCluster.StartAsync(1, WithDashboard);
        var web = cluster.HttpAddress!;
        using var tmp = new TempDir();
        var alice = AuthTestSupport.Token(cluster, "alice", Role.Submitter);
        var bob = AuthTestSupport.Token(cluster, "bob", Role.Submitter);
        var aliceJob = AuthTestSupport.SubmitLm(alice.Client, tmp, "alice-lm", steps: 5);
        var bobJob = AuthTestSupport.SubmitLm(bob.Client, tmp, "bob-lm", steps: 5);
        await cluster.WaitAsync(bobJob, TimeSpan.FromMinutes(3));
        using var browser = new Browser();

        browser.Driver.Navigate().GoToUrl($"{web}/jobs/{aliceJob}");
        browser.Wait(d => d.Url.Contains("/login", StringComparison.Ordinal), "the login page");
        Assert.NotEmpty(browser.Driver.FindElements(By.Id("login-form")));
        Assert.Contains("requires a token", browser.Driver.FindElement(By.TagName("main")).Text, StringComparison.Ordinal);
        Keep(browser, "login-page");
        Assert.Empty(browser.CspViolations());

        browser.Driver.FindElement(By.Id("token")).SendKeys("not-a-token");
        browser.Driver.FindElement(By.Id("login-submit")).Click();
        Assert.Contains("unknown token", browser.Wait(d => d.FindElement(By.Id("login-error")), "the login error").Text, StringComparison.Ordinal);

        LogIn(browser, web, alice.Token);
        browser.Wait(d => d.FindElements(By.CssSelector("#jobs-table tbody tr")).Count > 0, "alice's jobs");
        var rows = browser.Driver.FindElements(By.CssSelector("#jobs-table tbody tr")).Select(r => r.GetAttribute("data-job-id") ?? "").ToList();
        Assert.Equal([aliceJob], rows);
        Assert.Contains("alice (submitter)", browser.Driver.FindElement(By.Id("whoami")).Text, StringComparison.Ordinal);
        Assert.False(browser.Driver.FindElement(By.Id("nav-workers")).Displayed);
        Keep(browser, "submitter-jobs");

        browser.Driver.Navigate().GoToUrl($"{web}/jobs/{bobJob}");
        Assert.Contains($"no job \"{bobJob}\"", browser.Wait(d => d.FindElement(By.Id("error")), "the refusal").Text, StringComparison.Ordinal);
    }
}
