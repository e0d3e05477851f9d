from django.db import models


class Counter(models.Model):
    name = models.CharField(max_length=100, unique=True)
    value = models.IntegerField(default=0)


class Author(models.Model):
    name = models.CharField(max_length=100, unique=True)
    joined = models.DateTimeField(auto_now_add=True)


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    title = models.CharField(max_length=200)
    copies = models.IntegerField(default=0)
    data = models.JSONField(default=dict)


class Item(models.Model):
    batch = models.CharField(max_length=100, db_index=True)
    seq = models.IntegerField()
    label = models.CharField(max_length=100)
