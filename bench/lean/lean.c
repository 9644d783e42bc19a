/*
 * lean: the bench's reference for a program whose own start costs next to nothing.
 *
 * Built static against musl (`musl-gcc -static`), it runs no dynamic loader and no
 * CPU-feature probing before main: glibc's start issues CPUID instructions, each a trap
 * to the hypervisor on a virtual machine. The bench starts it from stopped
 * beside the sample function, so that faasd's own part of a cold start can be read apart
 * from the program's. It is also built against glibc (`lean-glibc`), whose exec floor
 * beside the musl build's is what glibc's start costs on the machine.
 *
 * It takes its listening socket from LISTEN_FDS (fd 3), as the sample does, and answers
 * every connection with one HTTP response that carries when it accepted (X-Accepted-Ns,
 * CLOCK_MONOTONIC), as the sample does.
 */
/* accept4 is a GNU extension in glibc's headers. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(void) {
    const char *fds = getenv("LISTEN_FDS");
    if (fds == NULL || atoi(fds) < 1) {
        fputs("lean: no socket passed (LISTEN_FDS); start it through faasd\n", stderr);
        return 2;
    }
    const char *instance = getenv("FAASD_INSTANCE");
    for (;;) {
        int conn = accept4(3, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0) {
            perror("lean: accept");
            return 1;
        }
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        char request[4096];
        /* One read holds a request line and headers this small. */
        if (read(conn, request, sizeof request) > 0) {
            char body[128];
            int body_len = snprintf(body, sizeof body, "lean: instance=%s\n",
                                    instance ? instance : "unknown");
            char response[512];
            int len = snprintf(response, sizeof response,
                               "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                               "X-Accepted-Ns: %llu\r\nContent-Length: %d\r\n"
                               "Connection: close\r\n\r\n%s",
                               (unsigned long long)now.tv_sec * 1000000000ull +
                                   (unsigned long long)now.tv_nsec,
                               body_len, body);
            if (write(conn, response, (size_t)len) < 0) {
                perror("lean: write");
            }
        }
        close(conn);
    }
}
