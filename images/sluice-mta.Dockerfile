# sluice-mta: a small non-root runtime image. The binary is built outside
# (scripts/build-images runs cargo), so no toolchain image is pulled; the base
# is Google's distroless cc image (glibc, libgcc, CA certificates, tzdata),
# which scripts/build-images can also make offline from Debian packages.
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="sluice-mta" \
      org.opencontainers.image.description="Sluice mail transfer agent (KumoMTA-style Lua policy)" \
      org.opencontainers.image.source="https://github.com/sluice-dev/sluice" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY sluice-mta /usr/local/bin/sluice-mta
# the nonroot user of the base image; the chart runs the pod as the same ids
USER 65532:65532
WORKDIR /home/nonroot
# SMTP and submission (the chart's Service maps 25 and 587 here), admin/metrics
EXPOSE 2525 5870 8000
# the spool: one persistent volume per pod (the chart's StatefulSet)
VOLUME ["/var/spool/sluice"]
ENTRYPOINT ["/usr/local/bin/sluice-mta"]
CMD ["--policy", "/etc/sluice/policy/init.lua"]
