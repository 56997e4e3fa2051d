using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Dtrain.Dashboard;
using Dtrain.Server;
using Dtrain.Tests.Cluster;

namespace Dtrain.Tests.Dashboard;

/// <summary>
/// The dashboard's listener against a hostile client (a real coordinator on loopback): an oversized login form gets 413
/// with a message, not 500; every answer carries a Content-Security-Policy, X-Frame-Options and nosniff.
/// </summary>
public class DashboardHardeningTests
{
    static HttpClient Http(string baseAddress) =>
        new(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = false }) { BaseAddress = new Uri(baseAddress), Timeout = TimeSpan.FromMinutes(2) };

    [Fact]
    public async Task A_10_MB_login_form_is_refused_with_413_naming_the_limit_with_or_without_a_length_and_a_small_one_still_works()
    {
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { HttpPort = 0 });
        using var http = Http(cluster.HttpAddress!);
        var huge = "token=" + new string('a', 10 << 20);

        using (var sized = new StringContent(huge, Encoding.ASCII, "application/x-www-form-urlencoded"))
        {
            var reply = await http.PostAsync("/login", sized);
            var body = await reply.Content.ReadAsStringAsync();
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, reply.StatusCode);
            Assert.Contains("the login form is at most 16 KiB", body, StringComparison.Ordinal);
            Assert.Contains($"request body of {huge.Length} bytes refused", body, StringComparison.Ordinal);
        }
        // Chunked: no Content-Length to check up front; the body limit stops the read (64 KiB: all of it is sent before
        // the server answers and closes, so the client reads the answer instead of a broken pipe).
        using (var chunked = new StreamContent(new MemoryStream(Encoding.ASCII.GetBytes(huge[..(64 << 10)]))))
        {
            chunked.Headers.ContentType = new MediaTypeHeaderValue("application/x-www-form-urlencoded");
            using var request = new HttpRequestMessage(HttpMethod.Post, "/login") { Content = chunked };
            request.Headers.TransferEncodingChunked = true;
            var reply = await http.SendAsync(request);
            Assert.Equal(HttpStatusCode.RequestEntityTooLarge, reply.StatusCode);
            Assert.Contains("the login form is at most 16 KiB", await reply.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        // A malformed form is the client's error (400), not the server's.
        using (var malformed = new StringContent("token=%zz&&=="))
        {
            malformed.Headers.ContentType = MediaTypeHeaderValue.Parse("multipart/form-data; boundary=x");
            var reply = await http.PostAsync("/login", malformed);
            Assert.Equal(HttpStatusCode.BadRequest, reply.StatusCode);
        }
        // The ordinary form still logs in.
        using var form = new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = cluster.AdminToken!, ["next"] = "/" });
        var ok = await http.PostAsync("/login", form);
        Assert.Equal(HttpStatusCode.Redirect, ok.StatusCode);
        Assert.Contains(ok.Headers.GetValues("Set-Cookie"), c => c.StartsWith(DashboardEndpoints.CookieName + "=", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Every_answer_of_the_dashboard_carries_a_content_security_policy_frame_and_sniffing_protection()
    {
        await using var cluster = await InProcessCluster.StartAsync(0, new CoordinatorOptions { HttpPort = 0 });
        using var http = Http(cluster.HttpAddress!);
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", cluster.AdminToken);
        foreach (var path in new[] { "/", "/jobs/job-0001", "/login", "/api/jobs", "/api/jobs/job-0042", "/static/dashboard.js", "/static/vendor/uplot/uPlot.iife.min.js", "/metrics", "/nothing-here" })
        {
            var reply = await http.GetAsync(path);
            var csp = string.Join(", ", reply.Headers.TryGetValues("Content-Security-Policy", out var v) ? v : []);
            Assert.True(csp == DashboardEndpoints.ContentSecurityPolicy, $"{path} ({(int)reply.StatusCode}): Content-Security-Policy \"{csp}\"");
            Assert.Equal("DENY", reply.Headers.GetValues("X-Frame-Options").Single());
            Assert.Equal("nosniff", reply.Headers.GetValues("X-Content-Type-Options").Single());
            Assert.Equal("no-referrer", reply.Headers.GetValues("Referrer-Policy").Single());
        }
        // No inline script or style in the pages: the policy allows none ('unsafe-inline' is not in it).
        Assert.DoesNotContain("unsafe-inline", DashboardEndpoints.ContentSecurityPolicy, StringComparison.Ordinal);
        Assert.Contains("frame-ancestors 'none'", DashboardEndpoints.ContentSecurityPolicy, StringComparison.Ordinal);
        foreach (var page in new[] { "/", "/login" })
        {
            var html = await http.GetStringAsync(page);
            Assert.DoesNotMatch("<script(?![^>]*\\bsrc=)", html);
            Assert.DoesNotContain("<style", html, StringComparison.Ordinal);
            Assert.DoesNotContain(" style=", html, StringComparison.Ordinal);
            Assert.DoesNotMatch(" on[a-z]+=", html);
        }
    }
}
